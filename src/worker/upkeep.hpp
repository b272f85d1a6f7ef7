// upkeep.hpp: the worker's periodic care of bemi.changes (upkeep.cpp).
#pragma once

extern "C" {
#include "postgres.h"
#include "bemi/registry.h"
#include "datatype/timestamp.h"
#include "utils/timestamp.h"
}

namespace bemi {

// Partitions made ahead of time, old ones dropped (ext/retention.sql does the work), when due.
// A failure is reported and retried a minute later; it never stops capture.
class Upkeep {
  public:
	void RunIfDue(BemiDatabase *db);
	// Would RunIfDue run now? (GetCurrentTimestamp cannot fail.)
	bool Due() const { return GetCurrentTimestamp() >= next_; }

  private:
	TimestampTz next_ = 0;
};

} // namespace bemi
