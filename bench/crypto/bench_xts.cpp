// bench-xts: the dm-crypt style sector cipher (a new tweak per sector) at
// 512- and 4096-byte sectors over 1 MiB buffers, beside OpenSSL's raw EVP
// AES-256-XTS with one EVP call per 4 KiB and no re-keying or re-IV (the
// ceiling on one thread). Prints each sector size's ratio to the ceiling.
//
// Usage: bench-xts [Google Benchmark flags]   (aim: >= 0.80 at 4096)
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "crypto/xts.hpp"

namespace {

constexpr std::size_t kBuffer = 1 << 20;

const rbdgw::SecretBuffer& key() {
  static const rbdgw::SecretBuffer k = [] {
    rbdgw::SecretBuffer b(64);
    if (RAND_bytes(b.data(), 64) != 1) std::abort();
    return b;
  }();
  return k;
}

std::vector<std::uint8_t> buffer() {
  std::vector<std::uint8_t> v(kBuffer);
  RAND_bytes(v.data(), static_cast<int>(v.size()));
  return v;
}

void BM_EvpRawXts4096(benchmark::State& state) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  unsigned char iv[16] = {};
  if (EVP_EncryptInit_ex2(ctx.get(), EVP_aes_256_xts(), key().data(), iv, nullptr) != 1) {
    state.SkipWithError("EVP_EncryptInit_ex2");
    return;
  }
  auto buf = buffer();
  for (auto _ : state) {
    for (std::size_t off = 0; off < buf.size(); off += 4096) {
      int outl = 0;
      EVP_EncryptUpdate(ctx.get(), buf.data() + off, &outl, buf.data() + off, 4096);
    }
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buf.size()));
}

void BM_XtsSectorCipher(benchmark::State& state) {
  const auto sector = static_cast<std::uint32_t>(state.range(0));
  static const auto* c512 = new auto(rbdgw::crypto::XtsSectorCipher::create(key(), 512));
  static const auto* c4096 = new auto(rbdgw::crypto::XtsSectorCipher::create(key(), 4096));
  const auto& cipher = sector == 512 ? *c512 : *c4096;
  auto buf = buffer();
  std::uint64_t offset = 0;
  for (auto _ : state) {
    cipher.encrypt(offset, buf);
    offset += buf.size();
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buf.size()));
}

BENCHMARK(BM_EvpRawXts4096);
BENCHMARK(BM_XtsSectorCipher)->Arg(512)->Arg(4096);

// Prints results as usual and remembers bytes/s per (benchmark, aggregate),
// the aggregate being "" for single runs or "mean"/"median" with repetitions.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      const auto it = r.counters.find("bytes_per_second");
      if (it != r.counters.end() && (r.aggregate_name.empty() || r.aggregate_name == "mean" ||
                                     r.aggregate_name == "median"))
        rate[{r.run_name.str(), r.aggregate_name}] = it->second;
    }
  }
  std::map<std::pair<std::string, std::string>, double> rate;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nGB/s = 10^9 bytes per CPU second, one thread\n");
  for (const auto& [key, r] : reporter.rate) {
    const auto& [name, agg] = key;
    const auto ceiling = reporter.rate.find({"BM_EvpRawXts4096", agg});
    if (name.rfind("BM_XtsSectorCipher/", 0) != 0 || ceiling == reporter.rate.end()) continue;
    std::printf("%-26s %-6s %.2f GB/s = %.2fx of raw EVP AES-256-XTS at 4 KiB (%.2f GB/s)\n",
                name.c_str(), agg.c_str(), r / 1e9, r / ceiling->second, ceiling->second / 1e9);
  }
  benchmark::Shutdown();
  return 0;
}
