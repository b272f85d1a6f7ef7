// guard.hpp: the one crossing between C++ exceptions and PostgreSQL's longjmp errors.
//
//  - Entry points PostgreSQL calls run their C++ body inside BEMI_GUARDED: any exception is
//    caught, the C++ frames unwind, and only then is it raised as an ERROR.
//  - C++ code calls PostgreSQL functions that may ereport(ERROR) through PgCall, which turns the
//    ERROR into a PgError exception. The callable given to PgCall must own nothing with a
//    destructor: longjmp leaves its frames without running them.
#pragma once

extern "C" {
#include "postgres.h"
}

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

namespace bemi {

// A PostgreSQL ERROR carried through C++ frames; re-raised unchanged by the entry guard.
class PgError : public std::exception {
public:
	explicit PgError(ErrorData *data) : data_(data) {}
	const char *what() const noexcept override;
	ErrorData *data() const { return data_; }

private:
	ErrorData *data_;
};

// An error of ours, raised by the entry guard with its SQLSTATE, detail and hint.
class Error : public std::exception {
public:
	Error(int sqlstate, std::string message, std::string detail = {}, std::string hint = {})
		: sqlstate_(sqlstate), message_(std::move(message)), detail_(std::move(detail)),
		  hint_(std::move(hint)) {}
	const char *what() const noexcept override { return message_.c_str(); }
	int sqlstate() const { return sqlstate_; }
	const std::string &detail() const { return detail_; }
	const std::string &hint() const { return hint_; }

private:
	int sqlstate_;
	std::string message_, detail_, hint_;
};

// What an entry guard caught; fixed buffers so that recording it cannot fail.
struct GuardFailure {
	ErrorData *pg_error = nullptr;
	int sqlstate = 0;
	char message[1024] = {};
	char detail[1024] = {};
	char hint[512] = {};
};

// Runs fn(arg) under PG_TRY; returns the copied error, or nullptr if none was raised.
ErrorData *PgTryCall(void (*fn)(void *), void *arg);

// Raises what a guard caught as a PostgreSQL ERROR. Call only from a frame with no C++ objects.
[[noreturn]] void RaiseFailure(const GuardFailure *failure);

void RecordFailure(GuardFailure *failure) noexcept;

template <typename F> auto PgCall(F &&f) -> decltype(f()) {
	using R = decltype(f());
	if constexpr (std::is_void_v<R>) {
		auto thunk = [](void *p) { (*static_cast<std::remove_reference_t<F> *>(p))(); };
		if (ErrorData *e = PgTryCall(thunk, &f))
			throw PgError(e);
	} else {
		static_assert(std::is_trivially_destructible_v<R>, "PgCall returns plain values only");
		struct Call {
			std::remove_reference_t<F> *f;
			R result;
		} call{&f, R{}};
		auto thunk = [](void *p) {
			auto *c = static_cast<Call *>(p);
			c->result = (*c->f)();
		};
		if (ErrorData *e = PgTryCall(thunk, &call))
			throw PgError(e);
		return call.result;
	}
}

// Runs f; on any exception fills *failure and returns false. Never throws.
template <typename F> bool Guard(F &&f, GuardFailure *failure) noexcept {
	try {
		f();
		return true;
	} catch (...) {
		RecordFailure(failure);
		return false;
	}
}

} // namespace bemi

// The body runs as C++; its exception becomes an ERROR once the guard's frame has returned.
#define BEMI_GUARDED(...)                                                                          \
	do {                                                                                           \
		bemi::GuardFailure bemi_failure_;                                                          \
		if (!bemi::Guard([&]() { __VA_ARGS__; }, &bemi_failure_))                                  \
			bemi::RaiseFailure(&bemi_failure_);                                                    \
	} while (0)
