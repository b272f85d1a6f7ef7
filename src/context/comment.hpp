// comment.hpp: the context a statement's Bemi comment gives (comment.cpp; the scanner is in
// comment_scan.cpp).
#pragma once

#include "context_state.hpp"

namespace bemi {

// The context given by the Bemi comment in or right in front of the statement at `location`
// (`length` bytes, 0: to the end) of `source`; null when there is none. A malformed comment is a
// WARNING, never an ERROR: a comment never makes the user's statement fail. Cheap when the text
// holds no "/*Bemi": no allocation, no PostgreSQL call.
ContextPtr StatementCommentContext(const char *source, int location, int length);

} // namespace bemi
