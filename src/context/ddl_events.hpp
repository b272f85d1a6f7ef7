// ddl_events.hpp: schema changes of recorded tables as events in the trail (ddl_events.cpp).
#pragma once

extern "C" {
#include "postgres.h"
#include "nodes/plannodes.h"
}

namespace bemi {

// Before a DDL message: the context message a write needs, if one is due (capture.cpp).
void BeforeDdlWrite();

} // namespace bemi
