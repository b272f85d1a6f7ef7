// hmac.cpp: SHA-256 (FIPS 180-4) and HMAC (RFC 2104) for bemi's MACs, with the key's two blocks
// hashed once per key instead of once per MAC (see include/bemi/hmac.h). Runs in every backend
// (signing context messages) and in decoding (verifying them, hashing masked values). Blocks are
// compressed with the CPU's SHA instructions where it has them (x86-64 SHA-NI), else by portable
// code. Checked against PostgreSQL's own sha256(), both ways, and against RFC 4231's vectors by
// sql/hmac.sql.
#include "bemi/hmac.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BEMI_SHA_NI 1
#endif

namespace {

constexpr size_t kBlock = 64;

constexpr std::array<uint32_t, 64> kRound = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

constexpr std::array<uint32_t, 8> kInitial = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

constexpr uint32_t Rotr(uint32_t x, int n) {
	return (x >> n) | (x << (32 - n));
}

// SHA-256's compression of `blocks` whole blocks into `state`, portably.
void CompressPortable(uint32_t *state, const uint8_t *p, size_t blocks) {
	for (; blocks > 0; blocks--, p += kBlock) {
		uint32_t w[64];
		for (int i = 0; i < 16; i++)
			w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 |
			       uint32_t(p[4 * i + 3]);
		for (int i = 16; i < 64; i++) {
			uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
			uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
			w[i] = w[i - 16] + s0 + w[i - 7] + s1;
		}
		uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
		uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
		for (int i = 0; i < 64; i++) {
			uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + kRound[i] + w[i];
			uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
			h = g;
			g = f;
			f = e;
			e = d + t1;
			d = c;
			c = b;
			b = a;
			a = t1 + t2;
		}
		state[0] += a;
		state[1] += b;
		state[2] += c;
		state[3] += d;
		state[4] += e;
		state[5] += f;
		state[6] += g;
		state[7] += h;
	}
}

#ifdef BEMI_SHA_NI
// The same with the SHA extensions: each SHA256RNDS2 does two rounds, SHA256MSG1/2 the message
// schedule. The instructions hold the state as two registers, ABEF and CDGH (highest lane first).
__attribute__((target("sha,sse4.1,ssse3"))) void CompressShaNi(uint32_t *state, const uint8_t *p,
                                                                 size_t blocks) {
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i cdab = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(state)), 0xB1);
	__m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(state + 4)), 0x1B);
	__m128i abef = _mm_alignr_epi8(cdab, hgfe, 8);
	__m128i cdgh = _mm_blend_epi16(hgfe, cdab, 0xF0);

	for (; blocks > 0; blocks--, p += kBlock) {
		const __m128i abef_in = abef, cdgh_in = cdgh;
		__m128i w[16]; // w[g]: the words 4g .. 4g+3 of the schedule
		for (int g = 0; g < 16; g++) {
			if (g < 4)
				w[g] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 16 * g)), bswap);
			else
				w[g] = _mm_sha256msg2_epu32(
				    _mm_add_epi32(_mm_sha256msg1_epu32(w[g - 4], w[g - 3]), _mm_alignr_epi8(w[g - 1], w[g - 2], 4)),
				    w[g - 1]);
			__m128i k = _mm_add_epi32(w[g], _mm_loadu_si128(reinterpret_cast<const __m128i *>(&kRound[4 * g])));
			cdgh = _mm_sha256rnds2_epu32(cdgh, abef, k);
			abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(k, 0x0E));
		}
		abef = _mm_add_epi32(abef, abef_in);
		cdgh = _mm_add_epi32(cdgh, cdgh_in);
	}

	__m128i feba = _mm_shuffle_epi32(abef, 0x1B);
	__m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
	_mm_storeu_si128(reinterpret_cast<__m128i *>(state), _mm_blend_epi16(feba, dchg, 0xF0));
	_mm_storeu_si128(reinterpret_cast<__m128i *>(state + 4), _mm_alignr_epi8(dchg, feba, 8));
}
#endif

using CompressFn = void (*)(uint32_t *, const uint8_t *, size_t);

// The compression this CPU does fastest, or nullptr when it has no SHA instructions.
CompressFn Accelerated() {
#ifdef BEMI_SHA_NI
	__builtin_cpu_init();
	if (__builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3"))
		return CompressShaNi;
#endif
	return nullptr;
}

CompressFn Compress() {
	static const CompressFn chosen = [] {
		CompressFn fast = Accelerated();
		return fast != nullptr ? fast : CompressPortable;
	}();
	return chosen;
}

// One SHA-256 computation: a state, the pending partial block, the length so far.
class Sha256 {
  public:
	explicit Sha256(const uint32_t *state = kInitial.data(), uint64_t length = 0,
	                CompressFn compress = Compress())
	    : length_(length), compress_(compress) {
		std::memcpy(state_, state, sizeof(state_));
	}

	void Update(const uint8_t *data, size_t len) {
		length_ += len;
		if (pending_ > 0) {
			size_t take = std::min(len, kBlock - pending_);
			std::memcpy(block_ + pending_, data, take);
			pending_ += take;
			data += take;
			len -= take;
			if (pending_ < kBlock)
				return;
			compress_(state_, block_, 1);
			pending_ = 0;
		}
		compress_(state_, data, len / kBlock);
		data += len - len % kBlock;
		len %= kBlock;
		std::memcpy(block_, data, len);
		pending_ = len;
	}

	void Final(uint8_t *digest) {
		uint64_t bits = length_ * 8;
		uint8_t pad[kBlock + 8] = {0x80};
		size_t pad_len = (pending_ < 56 ? 56 : 120) - pending_;
		for (int i = 0; i < 8; i++)
			pad[pad_len + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
		Update(pad, pad_len + 8);
		for (int i = 0; i < 8; i++)
			for (int b = 0; b < 4; b++)
				digest[4 * i + b] = static_cast<uint8_t>(state_[i] >> (24 - 8 * b));
	}

	const uint32_t *State() const { return state_; }

  private:
	uint32_t state_[8];
	uint64_t length_;
	CompressFn compress_;
	uint8_t block_[kBlock];
	size_t pending_ = 0;
};

// The state after one block of the key XOR pad.
void PadState(const uint8_t *key, uint8_t pad, uint32_t *state) {
	uint8_t block[kBlock];
	for (size_t i = 0; i < kBlock; i++)
		block[i] = key[i] ^ pad;
	Sha256 sha;
	sha.Update(block, kBlock);
	std::memcpy(state, sha.State(), 8 * sizeof(uint32_t));
}

} // namespace

extern "C" void BemiHmacKeyInit(BemiHmacKey *key, const uint8_t *secret, size_t len) {
	uint8_t block[kBlock] = {};
	if (len > kBlock) {
		Sha256 sha;
		sha.Update(secret, len);
		sha.Final(block);
	} else {
		std::memcpy(block, secret, len);
	}
	PadState(block, 0x36, key->inner);
	PadState(block, 0x5c, key->outer);
}

extern "C" void BemiHmac(const BemiHmacKey *key, int nparts, const void *const *parts, const size_t *lens,
                         uint8_t mac[BEMI_HMAC_LEN]) {
	uint8_t inner_digest[BEMI_HMAC_LEN];
	Sha256 inner(key->inner, kBlock);
	for (int i = 0; i < nparts; i++)
		inner.Update(static_cast<const uint8_t *>(parts[i]), lens[i]);
	inner.Final(inner_digest);
	Sha256 outer(key->outer, kBlock);
	outer.Update(inner_digest, sizeof(inner_digest));
	outer.Final(mac);
}

extern "C" bool BemiSha256(const uint8_t *data, size_t len, bool portable, uint8_t digest[BEMI_HMAC_LEN]) {
	CompressFn compress = portable ? CompressPortable : Accelerated();
	if (compress == nullptr)
		return false;
	Sha256 sha(kInitial.data(), 0, compress);
	sha.Update(data, len);
	sha.Final(digest);
	return true;
}
