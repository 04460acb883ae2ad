// Shared boilerplate of the self-checking testbenches (tb_NAME.cpp): the golden-data folder, binary array
// reading with size checks, the cases.txt list, mismatch tallies and the summary line.
//
// Every testbench is run as `tb_NAME DATA_DIR` (DATA_DIR written by gen_NAME.py), prints one line per case and
// finally `tb_NAME: M mismatches of N ...`, and exits with min(M, 255); I/O errors (a missing file, a file of
// the wrong size) count as mismatches.
#ifndef ROMA_TB_COMMON_H
#define ROMA_TB_COMMON_H

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace tb {

struct Context {
  std::string prog; // "tb_NAME": the prefix of every message and of the summary line
  std::string dir;  // the golden-data folder
  long io_errors = 0;
};

inline Context &ctx() {
  static Context c;
  return c;
}

// Parses `tb_NAME DATA_DIR`; prints the usage and returns false on a bad command line.
inline bool init(const char *prog, int argc, char **argv, const char *generator) {
  ctx().prog = prog;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DATA_DIR (written by %s)\n", argv[0], generator);
    return false;
  }
  ctx().dir = argv[1];
  return true;
}

inline std::string path(const std::string &name) { return ctx().dir + "/" + name; }

// An I/O or format error: printed to stderr as "tb_NAME: ...", counted as a mismatch by finish().
inline void io_error(const char *fmt, ...) {
  std::fprintf(stderr, "%s: ", ctx().prog.c_str());
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  ++ctx().io_errors;
}

// DATA_DIR/name as exactly `count` items of T (a missing file or another size is an I/O error; zeros then).
template <typename T>
std::vector<T> read_array(const std::string &name, size_t count) {
  std::vector<T> v(count);
  const std::string p = path(name);
  FILE *f = std::fopen(p.c_str(), "rb");
  if (!f) {
    io_error("cannot open %s", p.c_str());
    return v;
  }
  const size_t got = count ? std::fread(v.data(), sizeof(T), count, f) : 0;
  const bool extra = std::fgetc(f) != EOF;
  std::fclose(f);
  if (got != count || extra) io_error("%s has the wrong size (expected %zu items)", p.c_str(), count);
  return v;
}

// Items of `item` bytes in DATA_DIR/name (0 when it does not exist).
inline size_t file_items(const std::string &name, size_t item) {
  std::ifstream f(path(name), std::ios::binary | std::ios::ate);
  if (!f) return 0;
  return (size_t)f.tellg() / item;
}

inline bool file_exists(const std::string &name) { return (bool)std::ifstream(path(name)); }

// The non-empty lines of DATA_DIR/cases.txt; false (and a message) when the file cannot be read.
inline bool read_cases(std::vector<std::string> &lines) {
  std::ifstream list(path("cases.txt"));
  if (!list) {
    std::fprintf(stderr, "%s: cannot read %s/cases.txt\n", ctx().prog.c_str(), ctx().dir.c_str());
    return false;
  }
  std::string line;
  while (std::getline(list, line))
    if (!line.empty()) lines.push_back(line);
  return true;
}

// Compared/mismatch counts of a case (or a whole run), with the worst deviation as a fraction of its tolerance.
struct Tally {
  long mismatches = 0, compared = 0, shown = 0;
  double worst = 0.0, worst_abs = 0.0;
  std::string name;
  int show_limit = 5;
  bool check(bool ok) {
    ++compared;
    if (!ok) ++mismatches;
    return ok;
  }
  // An exact comparison; the first few failures are printed.
  void exact(bool ok, const char *what, long i, double got, double want) {
    if (!check(ok) && shown++ < show_limit)
      std::printf("  %s %s[%ld] = %.9g, golden %.9g (exact)\n", name.c_str(), what, i, got, want);
  }
  // |got - want| <= tol (equal infinities pass, NaN fails); the first few failures are printed.
  void within(double got, double want, double tol, const char *what, long i) {
    const double dev = std::fabs(got - want);
    const bool ok = dev <= tol || (std::isinf(got) && got == want);
    note(dev, tol);
    if (!check(ok) && shown++ < show_limit)
      std::printf("  %s %s[%ld] = %.9g, golden %.9g (|diff| %.3g > tolerance %.3g)\n", name.c_str(), what, i, got,
                  want, dev, tol);
  }
  // Records a deviation against its tolerance (for the "worst |diff|/tol" report).
  void note(double dev, double tol) {
    if (tol > 0 && dev / tol > worst) worst = dev / tol;
    if (dev > worst_abs && std::isfinite(dev)) worst_abs = dev;
  }
};

// Prints `tb_NAME: M mismatches of N<suffix>` (M includes I/O errors) and returns the exit code min(M, 255).
inline int finish(long mismatches, long compared, const std::string &suffix) {
  const long m = mismatches + ctx().io_errors;
  std::printf("%s: %ld mismatches of %ld%s\n", ctx().prog.c_str(), m, compared, suffix.c_str());
  return m > 255 ? 255 : (int)m;
}

} // namespace tb

#endif // ROMA_TB_COMMON_H
