// spool.hpp: the worker's buffer of decoded records between decoding and writing (spool.cpp).
//
// An append-then-read byte stream that keeps its head in memory and spills the rest to a file, so
// the worker's memory does not depend on transaction size. Plain C++ (no PostgreSQL calls):
// failures throw bemi::Error with a file-access SQLSTATE.
#pragma once

#include "bemi/guard.hpp"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace bemi {

class Spool {
  public:
	// Starts empty; a file left at `path` by a crashed worker holds nothing we need and goes.
	Spool(std::string path, size_t memory_limit);
	Spool(const Spool &) = delete;
	Spool &operator=(const Spool &) = delete;
	~Spool(); // closes and removes the file

	void Append(const void *data, size_t size);
	// Reads exactly size bytes; false if the stream ended first (what was there is copied).
	bool Read(void *data, size_t size);
	// Bytes appended and not yet read.
	size_t Bytes() const { return file_bytes_ + memory_.size() - read_file_ - read_memory_; }
	// Forgets everything: the next append starts a new stream.
	void Reset();

  private:
	struct Closer {
		void operator()(std::FILE *file) const { std::fclose(file); }
	};
	[[noreturn]] void Fail(const char *what) const;
	void Spill();
	void CloseFile() noexcept;

	std::string path_;
	size_t memory_limit_;
	std::vector<char> memory_;                // the tail of the stream, not yet spilled
	std::unique_ptr<std::FILE, Closer> file_; // the spilled head of the stream, if any
	size_t file_bytes_ = 0;
	size_t read_file_ = 0;         // read position within the file
	bool file_positioned_ = false; // the FILE's position is read_file_ (no seek per read)
	size_t read_memory_ = 0;       // read position within memory
};

} // namespace bemi
