// jsonb_check.cpp: is this a jsonb document in PostgreSQL's own format, whole and as PostgreSQL
// itself would have built it? A destination takes the changes a source's worker sends with their
// jsonb in that format (bemi._ingest, ingest_shim.c), so that it does not parse JSON text; the
// sender is a role with bemi_ingest only, so nothing it sends is stored, or read by jsonb's
// functions, before this says it is sound (docs/security.md). The layout is utils/jsonb.h's:
//   a container: a header (count and kind), one JEntry per element (per key, then per value, for
//   an object), then their data; a JEntry holds its type and either its length or, every
//   JB_OFFSET_STRIDE entries, its end offset in the data;
//   a string: its bytes, no terminator; a numeric: a numeric varlena, at an int-aligned offset;
//   a nested container: at an int-aligned offset; booleans and null: no data.
// Checked: every length and offset inside what was sent, in order, with the stride of offsets
// PostgreSQL writes; only the kinds and types it writes (a scalar only at the top); object keys
// strings in jsonb's order (by length, then bytes) with no two alike; strings valid in the
// database's encoding, without NUL; numerics plain varlenas (not compressed, not external) of a
// well-formed numeric (no NaN or infinity, which JSON lacks; digits below 10000; no leading or
// trailing zero digit); padding zero; nesting within the stack. Pure code: no allocation, no
// error raised, nothing kept.
#include "fn.h"

#include <cstring>

extern "C" {
#include "mb/pg_wchar.h"
#include "miscadmin.h"
}

namespace bemi {
namespace {

uint32 ReadUint32(const char *p) {
	uint32 v;
	memcpy(&v, p, sizeof(v));
	return v;
}

uint16 ReadUint16(const char *p) {
	uint16 v;
	memcpy(&v, p, sizeof(v));
	return v;
}

bool ZeroPadding(const char *from, const char *to) {
	for (const char *p = from; p < to; p++)
		if (*p != 0)
			return false;
	return true;
}

// numeric.c's layout (private there): after the varlena header, a uint16 header. Its top two bits:
// 10 short (sign, display scale and weight in the rest, digits after), 11 special (NaN and the
// infinities), 00 or 01 long (positive or negative, the display scale in the rest; an int16
// weight, then the digits). Digits are int16 in base 10000.
constexpr uint16 kNumericSignMask = 0xC000;
constexpr uint16 kNumericNeg = 0x4000;
constexpr uint16 kNumericShort = 0x8000;
constexpr uint16 kNumericSpecial = 0xC000;
constexpr uint16 kNumericShortSign = 0x2000;
constexpr int16 kNumericBase = 10000;

const char *NumericProblem(const char *p, size_t len) {
	if (len < 1)
		return "a numeric is cut short";
	size_t header;
	size_t size;
	if (VARATT_IS_1B(p) && !VARATT_IS_1B_E(p)) {
		header = VARHDRSZ_SHORT;
		size = VARSIZE_1B(p);
	} else if (len >= VARHDRSZ && VARATT_IS_4B_U(p)) {
		header = VARHDRSZ;
		size = VARSIZE_4B(p);
	} else
		return "a numeric is not a plain varlena";
	if (size != len || size < header + sizeof(uint16))
		return "a numeric's length does not match its entry";
	const char *body = p + header;
	size_t body_len = size - header;
	uint16 n_header = ReadUint16(body);
	size_t fixed;
	bool negative;
	int weight;
	int dscale;
	if ((n_header & kNumericSignMask) == kNumericSpecial)
		return "a numeric is NaN or infinite";
	if ((n_header & kNumericSignMask) == kNumericShort) {
		fixed = sizeof(uint16);
		negative = (n_header & kNumericShortSign) != 0;
		weight = (n_header & 0x0040) ? int(n_header & 0x003F) - 64 : int(n_header & 0x003F);
		dscale = (n_header & 0x1F80) >> 7;
	} else {
		fixed = sizeof(uint16) + sizeof(int16);
		if (body_len < fixed)
			return "a numeric is cut short";
		negative = (n_header & kNumericSignMask) == kNumericNeg;
		dscale = n_header & 0x3FFF;
		weight = static_cast<int16>(ReadUint16(body + sizeof(uint16)));
	}
	if (body_len < fixed || (body_len - fixed) % sizeof(int16) != 0)
		return "a numeric's digits are cut short";
	size_t ndigits = (body_len - fixed) / sizeof(int16);
	const char *digits = body + fixed;
	for (size_t i = 0; i < ndigits; i++) {
		int16 d = static_cast<int16>(ReadUint16(digits + i * sizeof(int16)));
		if (d < 0 || d >= kNumericBase)
			return "a numeric has a digit out of range";
	}
	if (ndigits == 0) {
		if (negative || weight != 0)
			return "a numeric zero is not as PostgreSQL writes it";
		return nullptr;
	}
	int last = ReadUint16(digits + (ndigits - 1) * sizeof(int16));
	if (ReadUint16(digits) == 0 || last == 0)
		return "a numeric has leading or trailing zero digits";
	// Its digits never go past its display scale (numeric_out would cut them: the text would be
	// another number).
	long exponent = long(weight) - long(ndigits - 1); // of the last digit, in base 10000
	if (exponent < 0) {
		long decimals = -exponent * 4;
		for (; last % 10 == 0; last /= 10)
			decimals--;
		if (decimals > dscale)
			return "a numeric has digits past its display scale";
	}
	return nullptr;
}

bool KeyBefore(const char *a, size_t alen, const char *b, size_t blen) {
	if (alen != blen)
		return alen < blen;
	return memcmp(a, b, alen) < 0;
}

const char *ContainerProblem(const char *c, size_t len, bool top, int encoding) {
	if (stack_is_too_deep())
		return "a document is nested too deeply";
	if (len < sizeof(uint32))
		return "a container is cut short";
	uint32 header = ReadUint32(c);
	uint32 count = header & JB_CMASK;
	uint32 kind = header & ~JB_CMASK;
	bool object = kind == JB_FOBJECT;
	bool scalar = kind == (JB_FARRAY | JB_FSCALAR);
	if (!object && kind != JB_FARRAY && !(scalar && top))
		return "a container is of no kind PostgreSQL writes";
	if (scalar && count != 1)
		return "a scalar document does not hold one value";
	uint64 nentries = object ? uint64(count) * 2 : uint64(count);
	if (nentries > (len - sizeof(uint32)) / sizeof(JEntry))
		return "a container's entries are cut short";
	const char *entries = c + sizeof(uint32);
	const char *data = entries + nentries * sizeof(JEntry);
	size_t data_len = len - sizeof(uint32) - nentries * sizeof(JEntry);
	size_t start = 0;
	const char *last_key = nullptr;
	size_t last_key_len = 0;
	for (uint64 i = 0; i < nentries; i++) {
		JEntry entry = ReadUint32(entries + i * sizeof(JEntry));
		bool has_offset = JBE_HAS_OFF(entry);
		if (has_offset != (i % JB_OFFSET_STRIDE == 0))
			return "a container's offsets are not where PostgreSQL writes them";
		size_t field = JBE_OFFLENFLD(entry);
		size_t end = has_offset ? field : start + field;
		if (end < start || end > data_len)
			return "an entry lies outside its container";
		const char *value = data + start;
		size_t value_len = end - start;
		uint32 type = entry & JENTRY_TYPEMASK;
		bool is_key = object && i < count;
		if (is_key && type != JENTRY_ISSTRING)
			return "an object key is not a string";
		if (scalar && type == JENTRY_ISCONTAINER)
			return "a scalar document holds a container";
		switch (type) {
		case JENTRY_ISSTRING:
			if (!pg_verify_mbstr(encoding, value, static_cast<int>(value_len), true))
				return "a string is not valid in the database's encoding";
			if (is_key) {
				if (last_key != nullptr && !KeyBefore(last_key, last_key_len, value, value_len))
					return "an object's keys are not in order, or repeat";
				last_key = value;
				last_key_len = value_len;
			}
			break;
		case JENTRY_ISNUMERIC:
		case JENTRY_ISCONTAINER: {
			size_t aligned = INTALIGN(start);
			if (aligned > end || !ZeroPadding(value, data + aligned))
				return "a value's padding is not as PostgreSQL writes it";
			const char *problem = type == JENTRY_ISNUMERIC
			                          ? NumericProblem(data + aligned, end - aligned)
			                          : ContainerProblem(data + aligned, end - aligned, false, encoding);
			if (problem != nullptr)
				return problem;
			break;
		}
		case JENTRY_ISBOOL_FALSE:
		case JENTRY_ISBOOL_TRUE:
		case JENTRY_ISNULL:
			if (value_len != 0)
				return "a boolean or null has data";
			break;
		default:
			return "an entry is of no type PostgreSQL writes";
		}
		start = end;
	}
	if (start != data_len)
		return "a container has data past its last entry";
	return nullptr;
}

} // namespace
} // namespace bemi

extern "C" const char *BemiJsonbProblem(const char *root, size_t len) {
	if (len > JENTRY_OFFLENMASK)
		return "a document is larger than jsonb allows";
	return bemi::ContainerProblem(root, len, true, GetDatabaseEncoding());
}
