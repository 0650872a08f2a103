// Speed-of-light reference: one hand-written pass over the columns for the 15-minute tumbling
// sum/count/max per meter, with dense (window, meter) arrays (ids known to be 0..meters-1 and
// the time span known in advance: the things a general engine cannot assume).
// usage: sol DIR N METERS   (DIR holds ts.bin int64 ms, meter.bin int64, kwh.bin float64)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static std::vector<char> slurp(const std::string& path, size_t bytes) {
  std::vector<char> buf(bytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(buf.data(), 1, bytes, f) != bytes) { std::perror(path.c_str()); std::exit(1); }
  std::fclose(f);
  return buf;
}

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const std::string dir = argv[1];
  const size_t n = std::strtoull(argv[2], nullptr, 10), meters = std::strtoull(argv[3], nullptr, 10);
  auto tsb = slurp(dir + "/ts.bin", n * 8), mb = slurp(dir + "/meter.bin", n * 8), kb = slurp(dir + "/kwh.bin", n * 8);
  const int64_t* ts = reinterpret_cast<const int64_t*>(tsb.data());
  const int64_t* meter = reinterpret_cast<const int64_t*>(mb.data());
  const double* kwh = reinterpret_cast<const double*>(kb.data());
  const int64_t width = 900000;
  int64_t lo = ts[0], hi = ts[0];
  for (size_t i = 0; i < n; ++i) { lo = ts[i] < lo ? ts[i] : lo; hi = ts[i] > hi ? ts[i] : hi; }
  const size_t windows = static_cast<size_t>(hi / width - lo / width + 1);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<double> sum(windows * meters, 0.0), mx(windows * meters, -1e300);
  std::vector<int64_t> cnt(windows * meters, 0);
  const int64_t w0 = lo / width;
  for (size_t i = 0; i < n; ++i) {
    const size_t cell = static_cast<size_t>(ts[i] / width - w0) * meters + static_cast<size_t>(meter[i]);
    sum[cell] += kwh[i];
    cnt[cell] += 1;
    mx[cell] = kwh[i] > mx[cell] ? kwh[i] : mx[cell];
  }
  int64_t rows = 0, total = 0;
  for (size_t c = 0; c < cnt.size(); ++c) { rows += cnt[c] > 0; total += cnt[c]; }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%.6f %lld %lld\n", s, static_cast<long long>(rows), static_cast<long long>(total));
  return 0;
}
