// comment_fuzz.cpp: fuzzes the Bemi comment scanner (src/context/comment_scan.cpp) under
// AddressSanitizer and UBSan. Two kinds of input:
//  - adversarial statements: string literals, quoted identifiers, dollar quotes, line comments and
//    nested comments that all contain fake `/*Bemi ... Bemi*/` text, with or without one real
//    Bemi comment between them: the scanner must find exactly the real one (never a fake);
//  - random bytes from an alphabet of SQL's special characters: it must not crash or read out of
//    bounds, and what it reports must lie inside the input.
// Usage: comment_fuzz [iterations] [seed]
#include "bemi/comment_scan.h"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace {

std::mt19937_64 rng;

size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }

std::string FakeJson() { return "{\"user_id\": \"spoofed-" + std::to_string(Pick(1000)) + "\"}"; }
std::string Fake() { return "/*Bemi " + FakeJson() + " Bemi*/"; }

std::string Doubled(const std::string &s, char quote) {
	std::string out;
	for (char c : s) {
		out += c;
		if (c == quote)
			out += quote;
	}
	return out;
}

std::string Piece() {
	switch (Pick(12)) {
	case 0: return "'" + Doubled("it's " + Fake(), '\'') + "'";
	case 1: return "E'\\' " + Fake() + " \\\\'";
	case 2: return "\"" + Doubled("col \"" + Fake(), '"') + "\"";
	case 3: return "$$ " + Fake() + " $ $1 $$";
	case 4: return "$body$ " + Fake() + " $$ $bod$ $body$";
	case 5: return "-- " + Fake() + "\n";
	case 6: return "/* outer /* " + Fake() + " */ still comment */";
	case 7: return "/*Bemilike " + FakeJson() + " */";
	case 8: return "a$b$ ";
	case 9: return "$1";
	case 10: return " SELECT x FROM t WHERE y = ";
	default: return " " + std::to_string(Pick(100000)) + " ";
	}
}

bool Adversarial(int iteration) {
	std::string sql = "UPDATE t SET v = v ";
	int pieces = static_cast<int>(Pick(8));
	int real_at = Pick(2) ? static_cast<int>(Pick(pieces + 1)) : -1;
	std::string real_json = "{\"request\": " + std::to_string(iteration) + ", \"s\": \"a\\u002a/b\"}";
	for (int i = 0; i <= pieces; i++) {
		if (i == real_at)
			sql += " /*Bemi " + real_json + " Bemi*/ ";
		if (i < pieces)
			sql += Piece();
	}
	BemiCommentScan scan = BemiScanComment(sql.data(), static_cast<int>(sql.size()), true);
	bool ok;
	if (real_at < 0)
		ok = scan.status == BEMI_COMMENT_NONE;
	else
		ok = scan.status == BEMI_COMMENT_FOUND && sql.substr(scan.json_start, scan.json_len) == real_json;
	if (!ok)
		std::fprintf(stderr, "MIS-ATTRIBUTED (status %d): %s\n", scan.status, sql.c_str());
	return ok;
}

bool RandomBytes() {
	static const char alphabet[] = "/*-$'\"\\Ebemi{} \n\tB0$$_a";
	std::string sql;
	size_t n = Pick(200);
	for (size_t i = 0; i < n; i++)
		sql += Pick(10) ? alphabet[Pick(sizeof(alphabet) - 1)] : static_cast<char>(Pick(256));
	if (Pick(3) == 0)
		sql.insert(Pick(sql.size() + 1), Pick(2) ? "/*Bemi {} Bemi*/" : "/*Bemi");
	BemiCommentScan scan = BemiScanComment(sql.data(), static_cast<int>(sql.size()), Pick(2));
	return scan.status != BEMI_COMMENT_FOUND ||
		   (scan.json_start >= 0 && scan.json_len >= 0 &&
			static_cast<size_t>(scan.json_start + scan.json_len) <= sql.size());
}

} // namespace

int main(int argc, char **argv) {
	long iterations = argc > 1 ? std::atol(argv[1]) : 300000;
	rng.seed(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20231211);
	long passed = 0, failed = 0;
	for (long i = 0; i < iterations; i++) {
		bool ok = (i % 2) ? Adversarial(static_cast<int>(i)) : RandomBytes();
		ok ? passed++ : failed++;
	}
	std::printf("comment scanner fuzz: %ld passed, %ld failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
