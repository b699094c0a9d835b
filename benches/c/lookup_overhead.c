/* The C side of the bindings' overhead benchmark (benches/bindings/run.py): the same loop
 * as src/bin/lookup_overhead.rs through libengram's engram_store_lookup_into.
 * Usage: lookup_overhead TABLE BACKEND CACHE_BYTES LAYER_ID IDS_FILE ROWS CALLS */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <engram.h>

static int backend_code(const char *name) {
  if (!strcmp(name, "memory")) return ENGRAM_BACKEND_MEMORY;
  if (!strcmp(name, "mmap")) return ENGRAM_BACKEND_MMAP;
  if (!strcmp(name, "pread")) return ENGRAM_BACKEND_PREAD;
  if (!strcmp(name, "uring")) return ENGRAM_BACKEND_URING;
  return ENGRAM_BACKEND_AUTO;
}

static int fail(void) {
  fprintf(stderr, "error: %s\n", engram_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: %s TABLE BACKEND CACHE_BYTES LAYER_ID IDS_FILE ROWS CALLS\n", argv[0]);
    return 2;
  }
  size_t rows = strtoull(argv[6], NULL, 10), calls = strtoull(argv[7], NULL, 10);
  uint32_t layer = (uint32_t)strtoul(argv[4], NULL, 10);
  FILE *f = fopen(argv[5], "rb");
  if (!f) return 2;
  fseek(f, 0, SEEK_END);
  size_t n_ids = (size_t)ftell(f) / 8;
  fseek(f, 0, SEEK_SET);
  uint64_t *ids = malloc(n_ids * 8);
  if (fread(ids, 8, n_ids, f) != n_ids) return 2;
  fclose(f);
  size_t batches = n_ids / rows;
  engram_store_options o;
  engram_store_options_init(&o);
  o.backend = backend_code(argv[2]);
  o.cache_bytes = strtoull(argv[3], NULL, 10);
  engram_store *s;
  if (engram_store_open(argv[1], &o, &s) != ENGRAM_OK) return fail();
  size_t out_len = rows * engram_store_row_bytes(s);
  uint8_t *out = malloc(out_len);
  for (size_t b = 0; b < batches; b++)
    if (engram_store_lookup_into(s, layer, ids + b * rows, rows, out, out_len) != ENGRAM_OK) return fail();
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (size_t k = 0; k < calls; k++) {
    size_t b = k % batches;
    if (engram_store_lookup_into(s, layer, ids + b * rows, rows, out, out_len) != ENGRAM_OK) return fail();
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)calls;
  printf("{\"harness\": \"c\", \"backend\": \"%s\", \"ns_per_call\": %.1f}\n", engram_store_backend(s), ns);
  engram_store_close(s);
  free(out);
  free(ids);
  return 0;
}
