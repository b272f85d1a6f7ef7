// spool.cpp: the worker's buffer of decoded records between decoding and writing (see spool.hpp).
//
// Records arrive while a transaction is replayed (possibly millions of them) and are written
// after it; the first memory_limit bytes stay in memory, the rest goes to a file that is
// truncated once drained. Runs in the worker, called from the sink; no PostgreSQL calls.
#include "spool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace bemi {

namespace {

// The SQLSTATE PostgreSQL's errcode_for_file_access() gives the same errno.
int FileAccessCode(int error) {
	switch (error) {
	case EPERM:
	case EACCES:
#ifdef EROFS
	case EROFS:
#endif
		return ERRCODE_INSUFFICIENT_PRIVILEGE;
	case ENOENT:
		return ERRCODE_UNDEFINED_FILE;
	case EEXIST:
		return ERRCODE_DUPLICATE_FILE;
	case ENOTDIR:
	case EISDIR:
	case ENOTEMPTY:
		return ERRCODE_WRONG_OBJECT_TYPE;
	case ENOSPC:
		return ERRCODE_DISK_FULL;
	case ENFILE:
	case EMFILE:
		return ERRCODE_INSUFFICIENT_RESOURCES;
	default:
		return ERRCODE_IO_ERROR;
	}
}

} // namespace

Spool::Spool(std::string path, size_t memory_limit) : path_(std::move(path)), memory_limit_(memory_limit) {
	memory_.reserve(std::min<size_t>(memory_limit, 1u << 20));
	std::remove(path_.c_str());
}

Spool::~Spool() {
	CloseFile();
}

void Spool::Fail(const char *what) const {
	int error = errno;
	throw Error(FileAccessCode(error),
	            fmt::format("bemi spool {}: {} ({})", path_, what, std::strerror(error)));
}

void Spool::CloseFile() noexcept {
	if (file_) {
		file_.reset();
		std::remove(path_.c_str());
	}
}

void Spool::Spill() {
	if (!file_) {
		file_.reset(std::fopen(path_.c_str(), "w+b"));
		if (!file_)
			Fail("cannot create");
		std::setvbuf(file_.get(), nullptr, _IOFBF, 1 << 20);
	}
	if (std::fseek(file_.get(), static_cast<long>(file_bytes_), SEEK_SET) != 0 ||
	    std::fwrite(memory_.data(), 1, memory_.size(), file_.get()) != memory_.size())
		Fail("cannot write");
	file_bytes_ += memory_.size();
	memory_.clear();
}

void Spool::Append(const void *data, size_t size) {
	if (memory_.size() + size > memory_limit_ && !memory_.empty() && read_memory_ == 0)
		Spill();
	const char *bytes = static_cast<const char *>(data);
	memory_.insert(memory_.end(), bytes, bytes + size);
}

bool Spool::Read(void *data, size_t size) {
	char *out = static_cast<char *>(data);
	while (size > 0) {
		size_t n;
		if (read_file_ < file_bytes_) {
			n = std::min(size, file_bytes_ - read_file_);
			if (!file_positioned_) {
				if (std::fseek(file_.get(), static_cast<long>(read_file_), SEEK_SET) != 0)
					Fail("cannot seek");
				file_positioned_ = true;
			}
			if (std::fread(out, 1, n, file_.get()) != n)
				Fail("cannot read");
			read_file_ += n;
		} else if (read_memory_ < memory_.size()) {
			n = std::min(size, memory_.size() - read_memory_);
			std::memcpy(out, memory_.data() + read_memory_, n);
			read_memory_ += n;
		} else {
			return false;
		}
		out += n;
		size -= n;
	}
	return true;
}

void Spool::Reset() {
	memory_.clear();
	if (memory_.capacity() > memory_limit_)
		memory_.shrink_to_fit(); // only a request; keeping the memory is fine too
	read_file_ = read_memory_ = 0;
	file_positioned_ = false;
	if (file_) {
		file_.reset();
		if (std::remove(path_.c_str()) != 0 && errno != ENOENT)
			Fail("cannot remove");
	}
	file_bytes_ = 0;
}

} // namespace bemi
