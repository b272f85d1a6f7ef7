// spool.cpp: the worker's buffer of decoded records between decoding and writing.
//
// Records arrive while a transaction is replayed (possibly millions of them) and are written
// after it; the first memory_limit bytes stay in memory, the rest goes to a file that is
// truncated once drained. No PostgreSQL calls: errors come back as messages.
#include "bemi/spool.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

struct BemiSpool {
	std::string path;
	size_t memory_limit = 0;
	std::vector<char> memory;   // the tail of the stream, not yet spilled
	std::FILE *file = nullptr;  // spilled head of the stream, if any
	size_t file_bytes = 0;
	size_t read_file = 0;       // read position within the file
	bool file_positioned = false; // the FILE's position is read_file (no seek per read)
	size_t read_memory = 0;     // read position within memory
	std::string error;
};

namespace {

// Every extern "C" function may end here: it must not throw, even when out of memory.
bool Fail(BemiSpool *spool, const char **error, const char *what) noexcept {
	try {
		spool->error = fmt::format("bemi spool {}: {} ({})", spool->path, what, std::strerror(errno));
		*error = spool->error.c_str();
	} catch (...) {
		*error = "bemi spool: I/O error";
	}
	return false;
}

bool Spill(BemiSpool *spool, const char **error) {
	if (!spool->file) {
		spool->file = std::fopen(spool->path.c_str(), "w+b");
		if (!spool->file)
			return Fail(spool, error, "cannot create");
		std::setvbuf(spool->file, nullptr, _IOFBF, 1 << 20);
	}
	if (std::fseek(spool->file, static_cast<long>(spool->file_bytes), SEEK_SET) != 0 ||
		std::fwrite(spool->memory.data(), 1, spool->memory.size(), spool->file) != spool->memory.size())
		return Fail(spool, error, "cannot write");
	spool->file_bytes += spool->memory.size();
	spool->memory.clear();
	return true;
}

} // namespace

extern "C" BemiSpool *BemiSpoolCreate(const char *path, size_t memory_limit, const char **error) {
	try {
		auto *spool = new BemiSpool;
		spool->path = path;
		spool->memory_limit = memory_limit;
		spool->memory.reserve(memory_limit < (1u << 20) ? memory_limit : (1u << 20));
		std::remove(path); // a leftover from a crash holds nothing we need
		return spool;
	} catch (...) {
		*error = "bemi spool: out of memory";
		return nullptr;
	}
}

extern "C" bool BemiSpoolAppend(BemiSpool *spool, const void *data, size_t size, const char **error) {
	try {
		if (spool->memory.size() + size > spool->memory_limit && !spool->memory.empty() &&
			spool->read_memory == 0 && !Spill(spool, error))
			return false;
		const char *bytes = static_cast<const char *>(data);
		spool->memory.insert(spool->memory.end(), bytes, bytes + size);
		return true;
	} catch (...) {
		*error = "bemi spool: out of memory";
		return false;
	}
}

extern "C" bool BemiSpoolRead(BemiSpool *spool, void *data, size_t size, bool *eof, const char **error) {
	char *out = static_cast<char *>(data);
	*eof = false;
	while (size > 0) {
		if (spool->read_file < spool->file_bytes) {
			size_t n = std::min(size, spool->file_bytes - spool->read_file);
			if (!spool->file_positioned) {
				if (std::fseek(spool->file, static_cast<long>(spool->read_file), SEEK_SET) != 0)
					return Fail(spool, error, "cannot seek");
				spool->file_positioned = true;
			}
			if (std::fread(out, 1, n, spool->file) != n)
				return Fail(spool, error, "cannot read");
			spool->read_file += n;
			out += n;
			size -= n;
		} else if (spool->read_memory < spool->memory.size()) {
			size_t n = std::min(size, spool->memory.size() - spool->read_memory);
			std::memcpy(out, spool->memory.data() + spool->read_memory, n);
			spool->read_memory += n;
			out += n;
			size -= n;
		} else {
			*eof = true;
			return true;
		}
	}
	return true;
}

extern "C" size_t BemiSpoolBytes(const BemiSpool *spool) {
	return spool->file_bytes + spool->memory.size() - spool->read_file - spool->read_memory;
}

extern "C" bool BemiSpoolReset(BemiSpool *spool, const char **error) {
	spool->memory.clear();
	if (spool->memory.capacity() > spool->memory_limit) {
		try {
			spool->memory.shrink_to_fit(); // only a request; keeping the memory is fine too
		} catch (...) {
		}
	}
	spool->read_file = spool->read_memory = 0;
	spool->file_positioned = false;
	if (spool->file) {
		std::fclose(spool->file);
		spool->file = nullptr;
		if (std::remove(spool->path.c_str()) != 0 && errno != ENOENT)
			return Fail(spool, error, "cannot remove");
	}
	spool->file_bytes = 0;
	return true;
}

extern "C" void BemiSpoolDestroy(BemiSpool *spool) {
	const char *ignored;
	BemiSpoolReset(spool, &ignored);
	delete spool;
}
