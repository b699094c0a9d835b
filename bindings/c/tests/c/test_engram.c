/* The C ABI from C: rows equal to `engram lookup --json`, prefetch tickets, hashing,
 * dequantisation, stats, and a clear status for every kind of bad input.
 *
 * Usage: test_engram TABLE EXPECTED
 *        test_engram --held-tickets unix:SOCKET
 *   EXPECTED: lines "LAYER_ID ROW HEX" written from `engram lookup --json` (see
 *   bindings/c/test.sh). Run under valgrind by that script. Exit 0 when every check passes.
 *   --held-tickets: 300 prefetches holding every ticket through a running `engram serve`.
 *   A hang fails: the process arms alarm(2), whose SIGALRM ends it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    checks++;                                                                \
    if (!(cond)) {                                                           \
      failures++;                                                            \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
      fprintf(stderr, __VA_ARGS__);                                          \
      fprintf(stderr, " (last error: %s)\n", engram_last_error());          \
    }                                                                        \
  } while (0)

#define EXPECT_STATUS(call, want)                                            \
  do {                                                                       \
    int rc_ = (call);                                                        \
    CHECK(rc_ == (want), "%s returned %s, expected %s", #call,               \
          engram_status_name(rc_), engram_status_name(want));                \
    if ((want) != ENGRAM_OK)                                                 \
      CHECK(strlen(engram_last_error()) > 0, "no message for %s", #call);    \
  } while (0)

#define MAX_EXPECTED 256

typedef struct {
  uint32_t layer;
  uint64_t row;
  uint8_t bytes[4096];
  size_t len;
} expected_row;

static size_t read_expected(const char *path, expected_row *rows) {
  FILE *f = fopen(path, "r");
  if (!f) {
    perror(path);
    exit(2);
  }
  size_t n = 0;
  unsigned layer;
  uint64_t row;
  static char hex[2 * 4096 + 2];
  while (n < MAX_EXPECTED && fscanf(f, "%u %" SCNu64 " %8193s", &layer, &row, hex) == 3) {
    rows[n].layer = layer;
    rows[n].row = row;
    rows[n].len = strlen(hex) / 2;
    for (size_t i = 0; i < rows[n].len; i++) {
      unsigned b;
      sscanf(hex + 2 * i, "%2x", &b);
      rows[n].bytes[i] = (uint8_t)b;
    }
    n++;
  }
  fclose(f);
  return n;
}

/* Every expected row through lookup_into and through a prefetch ticket. */
static void check_rows(engram_store *s, const expected_row *want, size_t n) {
  size_t rb = engram_store_row_bytes(s);
  uint64_t *ids = malloc(n * sizeof *ids);
  uint8_t *out = malloc(n * rb);
  size_t start = 0;
  while (start < n) {
    size_t end = start;
    while (end < n && want[end].layer == want[start].layer) {
      ids[end - start] = want[end].row;
      end++;
    }
    size_t k = end - start;
    uint32_t layer = want[start].layer;
    memset(out, 0xAB, k * rb);
    EXPECT_STATUS(engram_store_lookup_into(s, layer, ids, k, out, k * rb), ENGRAM_OK);
    for (size_t i = 0; i < k; i++) {
      CHECK(want[start + i].len == rb, "row size %zu vs %zu", want[start + i].len, rb);
      CHECK(memcmp(out + i * rb, want[start + i].bytes, rb) == 0,
            "layer %u row %" PRIu64 " differs from engram lookup", layer, ids[i]);
    }
    engram_ticket *t = NULL;
    EXPECT_STATUS(engram_store_prefetch(s, layer, ids, k, &t), ENGRAM_OK);
    int ready = -1;
    EXPECT_STATUS(engram_ticket_poll(t, &ready), ENGRAM_OK);
    CHECK(ready == 0 || ready == 1, "ready=%d", ready);
    memset(out, 0xCD, k * rb);
    EXPECT_STATUS(engram_ticket_wait(t, out, k * rb), ENGRAM_OK);
    const uint8_t *in_place = NULL;
    size_t len = 0;
    EXPECT_STATUS(engram_ticket_rows(t, &in_place, &len), ENGRAM_OK);
    CHECK(len == k * rb, "ticket rows %zu", len);
    CHECK(((uintptr_t)in_place & 4095) == 0, "ticket buffer not page-aligned");
    for (size_t i = 0; i < k; i++) {
      CHECK(memcmp(out + i * rb, want[start + i].bytes, rb) == 0, "prefetched row differs");
      CHECK(memcmp(in_place + i * rb, want[start + i].bytes, rb) == 0, "in-place row differs");
    }
    EXPECT_STATUS(engram_ticket_poll(t, &ready), ENGRAM_OK);
    CHECK(ready == 1, "ready after wait");
    /* Short output buffer: an error, the rows still readable in place. */
    EXPECT_STATUS(engram_ticket_wait(t, out, k * rb - 1), ENGRAM_ERR_BUFFER_SIZE);
    engram_ticket_free(t);
    start = end;
  }
  free(ids);
  free(out);
}

static void check_errors(const char *table, engram_store *s) {
  size_t rb = engram_store_row_bytes(s);
  uint64_t ids[3] = {0, 1, 2};
  uint8_t *out = malloc(3 * rb);
  engram_store *bad = (engram_store *)0x1;
  /* A path that does not exist. */
  EXPECT_STATUS(engram_store_open("/nonexistent/engram-table", NULL, &bad), ENGRAM_ERR_NOT_FOUND);
  CHECK(bad == (engram_store *)0x1, "out written on failure");
  CHECK(strstr(engram_last_error(), "/nonexistent/engram-table") != NULL, "path in message");
  EXPECT_STATUS(engram_store_open(NULL, NULL, &bad), ENGRAM_ERR_NULL);
  EXPECT_STATUS(engram_store_open(table, NULL, NULL), ENGRAM_ERR_NULL);
  EXPECT_STATUS(engram_store_open("unix:/nonexistent/engram.sock", NULL, &bad), ENGRAM_ERR_UNAVAILABLE);
  engram_store_options o;
  EXPECT_STATUS(engram_store_options_init(&o), ENGRAM_OK);
  o.backend = 42;
  EXPECT_STATUS(engram_store_open(table, &o, &bad), ENGRAM_ERR_INVALID_ARGUMENT);
  engram_store_options_init(&o);
  o.struct_size = 8;
  EXPECT_STATUS(engram_store_open(table, &o, &bad), ENGRAM_ERR_INVALID_ARGUMENT);
  engram_store_options_init(&o);
  o.tokenizer_path = "/nonexistent/tokenizer.json";
  EXPECT_STATUS(engram_store_open(table, &o, &bad), ENGRAM_ERR_TOKENIZER);
  /* An unknown layer. */
  EXPECT_STATUS(engram_store_lookup_into(s, 7, ids, 3, out, 3 * rb), ENGRAM_ERR_UNKNOWN_LAYER);
  CHECK(strstr(engram_last_error(), "7") != NULL, "layer in message");
  engram_ticket *t = NULL;
  EXPECT_STATUS(engram_store_prefetch(s, 7, ids, 3, &t), ENGRAM_ERR_UNKNOWN_LAYER);
  CHECK(t == NULL, "ticket on failure");
  /* Short, long and NULL buffers. */
  memset(out, 0x5A, 3 * rb);
  EXPECT_STATUS(engram_store_lookup_into(s, 1, ids, 3, out, 3 * rb - 1), ENGRAM_ERR_BUFFER_SIZE);
  CHECK(out[0] == 0x5A, "written despite the error");
  EXPECT_STATUS(engram_store_lookup_into(s, 1, ids, 3, out, 3 * rb + 1), ENGRAM_ERR_BUFFER_SIZE);
  EXPECT_STATUS(engram_store_lookup_into(s, 1, ids, 3, NULL, 3 * rb), ENGRAM_ERR_NULL);
  EXPECT_STATUS(engram_store_lookup_into(s, 1, NULL, 3, out, 3 * rb), ENGRAM_ERR_NULL);
  EXPECT_STATUS(engram_store_lookup_into(NULL, 1, ids, 3, out, 3 * rb), ENGRAM_ERR_NULL);
  EXPECT_STATUS(engram_store_lookup_into(s, 1, (const uint64_t *)((uintptr_t)ids + 1), 2, out, 2 * rb),
                ENGRAM_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(engram_store_lookup_into(s, 1, NULL, 0, NULL, 0), ENGRAM_OK);
  CHECK(strlen(engram_last_error()) == 0, "message cleared by success");
  /* A row id past the layer: now, and through a ticket. */
  uint64_t rows = 0;
  EXPECT_STATUS(engram_store_layer_rows(s, 1, &rows), ENGRAM_OK);
  uint64_t past[2] = {0, rows};
  EXPECT_STATUS(engram_store_lookup_into(s, 1, past, 2, out, 2 * rb), ENGRAM_ERR_OUT_OF_RANGE);
  EXPECT_STATUS(engram_store_prefetch(s, 1, past, 2, &t), ENGRAM_OK);
  EXPECT_STATUS(engram_ticket_wait(t, out, 2 * rb), ENGRAM_ERR_OUT_OF_RANGE);
  EXPECT_STATUS(engram_ticket_wait(t, NULL, 0), ENGRAM_ERR_OUT_OF_RANGE);
  engram_ticket_free(t);
  EXPECT_STATUS(engram_ticket_wait(NULL, NULL, 0), ENGRAM_ERR_NULL);
  engram_ticket_free(NULL);
  engram_store_close(NULL);
  /* Raw token ids need the tokenizer. */
  int64_t tokens[4] = {5, 17, 17, 3};
  uint64_t row_ids[64];
  size_t h = engram_store_n_hash_heads(s);
  EXPECT_STATUS(engram_store_row_ids(s, 1, tokens, 4, ENGRAM_TOKENS_RAW, row_ids, 4 * h), ENGRAM_ERR_TOKENIZER);
  EXPECT_STATUS(engram_store_row_ids(s, 1, tokens, 4, 9, row_ids, 4 * h), ENGRAM_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(engram_store_row_ids(s, 1, tokens, 4, ENGRAM_TOKENS_CANONICAL, row_ids, 4 * h - 1),
                ENGRAM_ERR_BUFFER_SIZE);
  /* Canonical ids beyond the compressed vocabulary (issue 20, M2); negative ids are padding. */
  int64_t beyond[2] = {5, (int64_t)1 << 40};
  EXPECT_STATUS(engram_store_row_ids(s, 1, beyond, 2, ENGRAM_TOKENS_CANONICAL, row_ids, 2 * h),
                ENGRAM_ERR_OUT_OF_RANGE);
  beyond[1] = INT64_MAX;
  EXPECT_STATUS(engram_store_row_ids(s, 1, beyond, 2, ENGRAM_TOKENS_CANONICAL, row_ids, 2 * h),
                ENGRAM_ERR_OUT_OF_RANGE);
  beyond[1] = -1;
  EXPECT_STATUS(engram_store_row_ids(s, 1, beyond, 2, ENGRAM_TOKENS_CANONICAL, row_ids, 2 * h), ENGRAM_OK);
  /* Buffers that overlap: refused before anything is read or written. */
  uint8_t *buf = malloc(3 * rb);
  uint64_t *in_buf = (uint64_t *)(void *)(buf + rb);
  in_buf[0] = 0, in_buf[1] = 1, in_buf[2] = 2;
  EXPECT_STATUS(engram_store_lookup_into(s, 1, in_buf, 3, buf, 3 * rb), ENGRAM_ERR_INVALID_ARGUMENT);
  CHECK(strstr(engram_last_error(), "overlap") != NULL, "overlap named");
  CHECK(in_buf[1] == 1, "ids overwritten");
  EXPECT_STATUS(engram_store_lookup_into(s, 1, (uint64_t *)(void *)buf, 3, buf, 3 * rb),
                ENGRAM_ERR_INVALID_ARGUMENT);
  uint64_t both[64] = {5, 17, 17, 3};
  EXPECT_STATUS(engram_store_row_ids(s, 1, (const int64_t *)(void *)both, 4, ENGRAM_TOKENS_CANONICAL,
                                     both, 4 * h),
                ENGRAM_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(engram_store_dequantize(s, buf, rb, (float *)(void *)buf, rb / 2), ENGRAM_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(engram_store_prefetch(s, 1, ids, 2, &t), ENGRAM_OK);
  const uint8_t *own = NULL;
  size_t own_len = 0;
  EXPECT_STATUS(engram_ticket_rows(t, &own, &own_len), ENGRAM_OK);
  EXPECT_STATUS(engram_ticket_wait(t, (uint8_t *)(uintptr_t)own, own_len), ENGRAM_ERR_INVALID_ARGUMENT);
  EXPECT_STATUS(engram_ticket_wait(t, buf, 2 * rb), ENGRAM_OK);
  engram_ticket_free(t);
  free(buf);
  size_t needed = 0;
  char small[4];
  EXPECT_STATUS(engram_store_stats_json(s, small, sizeof small, &needed), ENGRAM_ERR_BUFFER_SIZE);
  CHECK(needed > sizeof small, "needed %zu", needed);
  free(out);
}

static void check_hash_and_dequantize(engram_store *s) {
  size_t h = engram_store_n_hash_heads(s);
  size_t n = engram_store_max_ngram(s);
  CHECK(h == 16 && n == 3, "heads %zu, max_ngram %zu", h, n);
  int64_t tokens[6] = {5, 17, 17, 99000, -1, 3};
  uint64_t all[6 * 16], window[3 * 16];
  EXPECT_STATUS(engram_store_row_ids(s, 15, tokens, 6, ENGRAM_TOKENS_CANONICAL, all, 6 * h), ENGRAM_OK);
  /* A position's rows depend only on the last max_ngram tokens. */
  EXPECT_STATUS(engram_store_row_ids(s, 15, tokens + 2, 3, ENGRAM_TOKENS_CANONICAL, window, 3 * h), ENGRAM_OK);
  CHECK(memcmp(all + 4 * h, window + 2 * h, h * sizeof(uint64_t)) == 0, "window rows differ");
  uint64_t rows = 0;
  engram_store_layer_rows(s, 15, &rows);
  for (size_t i = 0; i < 6 * h; i++) CHECK(all[i] < rows, "row id %" PRIu64 " >= %" PRIu64, all[i], rows);
  /* The hashed rows can be looked up and dequantised. */
  engram_row_layout layout;
  EXPECT_STATUS(engram_store_row_layout(s, &layout), ENGRAM_OK);
  CHECK(layout.kind == ENGRAM_ROW_BF16 && layout.dim == 64 && layout.row_bytes == 128,
        "layout %d %u %zu", layout.kind, layout.dim, layout.row_bytes);
  uint8_t *bytes = malloc(6 * h * layout.row_bytes);
  float *values = malloc(6 * h * layout.dim * sizeof(float));
  EXPECT_STATUS(engram_store_lookup_into(s, 15, all, 6 * h, bytes, 6 * h * layout.row_bytes), ENGRAM_OK);
  EXPECT_STATUS(engram_store_dequantize(s, bytes, 6 * h * layout.row_bytes, values, 6 * h * layout.dim),
                ENGRAM_OK);
  /* bf16 is the upper half of an f32. */
  uint32_t bits = ((uint32_t)bytes[1] << 24) | ((uint32_t)bytes[0] << 16);
  float first;
  memcpy(&first, &bits, sizeof first);
  CHECK(memcmp(&first, &values[0], sizeof first) == 0, "dequantised %g vs %g", values[0], first);
  EXPECT_STATUS(engram_store_dequantize(s, bytes, 100, values, 64), ENGRAM_ERR_BUFFER_SIZE);
  free(bytes);
  free(values);
}

/* 300 prefetches of layer `layer` holding every ticket: each is ENGRAM_OK or, once `max`
 * slots are held, ENGRAM_ERR_LIMIT (never a hang: alarm(2) ends a stuck process); a
 * lookup meanwhile is OK or LIMIT; once they are freed, prefetches work again. */
#define HELD_TRIES 300
static void check_held_tickets(engram_store *s, uint32_t layer, size_t max) {
  static engram_ticket *held[HELD_TRIES];
  size_t n_held = 0, limits = 0;
  uint64_t id = 1;
  for (size_t k = 0; k < HELD_TRIES; k++) {
    engram_ticket *t = NULL;
    int rc = engram_store_prefetch(s, layer, &id, 1, &t);
    if (rc == ENGRAM_OK) {
      held[n_held++] = t;
    } else {
      CHECK(rc == ENGRAM_ERR_LIMIT && t == NULL, "prefetch %zu with %zu held: %s", k, n_held,
            engram_status_name(rc));
      limits++;
    }
  }
  /* A prefetch that completed at once holds no slot, so more than `max` may be held. */
  CHECK(n_held >= (max < HELD_TRIES ? 1 : 0) && n_held + limits == HELD_TRIES,
        "%zu held (limit %zu), %zu limits", n_held, max, limits);
  size_t rb = engram_store_row_bytes(s);
  uint8_t *out = malloc(rb);
  int rc = engram_store_lookup_into(s, layer, &id, 1, out, rb);
  CHECK(rc == ENGRAM_OK || rc == ENGRAM_ERR_LIMIT, "lookup with every ticket held: %s",
        engram_status_name(rc));
  for (size_t k = 0; k < n_held; k++) {
    EXPECT_STATUS(engram_ticket_wait(held[k], NULL, 0), ENGRAM_OK);
    engram_ticket_free(held[k]);
  }
  EXPECT_STATUS(engram_store_lookup_into(s, layer, &id, 1, out, rb), ENGRAM_OK);
  free(out);
  printf("held tickets (%s): %zu held, %zu limit errors\n", engram_store_backend(s), n_held,
         limits);
}

int main(int argc, char **argv) {
  alarm(300);
  if (argc == 3 && strcmp(argv[1], "--held-tickets") == 0) {
    engram_store *s = NULL;
    EXPECT_STATUS(engram_store_open(argv[2], NULL, &s), ENGRAM_OK);
    if (s) {
      uint64_t layers[2] = {0};
      EXPECT_STATUS(engram_store_layer_ids(s, layers, 2), ENGRAM_OK);
      check_held_tickets(s, (uint32_t)layers[0], ENGRAM_SERVICE_MAX_TICKETS);
      engram_store_close(s);
    }
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
  }
  if (argc != 3) {
    fprintf(stderr, "usage: %s TABLE EXPECTED | --held-tickets unix:SOCKET\n", argv[0]);
    return 2;
  }
  static expected_row want[MAX_EXPECTED];
  size_t n = read_expected(argv[2], want);
  CHECK(n > 0, "no expected rows in %s", argv[2]);
  static const int backends[] = {ENGRAM_BACKEND_MEMORY, ENGRAM_BACKEND_MMAP, ENGRAM_BACKEND_PREAD,
                                 ENGRAM_BACKEND_URING};
  for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
    for (int cached = 0; cached < 2; cached++) {
      engram_store_options o;
      engram_store_options_init(&o);
      o.backend = backends[b];
      o.cache_bytes = cached ? (1u << 20) : 0;
      o.io_workers = 1;
      engram_store *s = NULL;
      EXPECT_STATUS(engram_store_open(argv[1], &o, &s), ENGRAM_OK);
      if (!s) continue;
      printf("backend %s, cache %d\n", engram_store_backend(s), cached);
      size_t nl = engram_store_n_layers(s);
      uint64_t layers[4] = {0};
      CHECK(nl == 2, "layers %zu", nl);
      EXPECT_STATUS(engram_store_layer_ids(s, layers, 1), ENGRAM_ERR_BUFFER_SIZE);
      EXPECT_STATUS(engram_store_layer_ids(s, layers, 4), ENGRAM_OK);
      CHECK(layers[0] == 1 && layers[1] == 15, "layer ids %" PRIu64 " %" PRIu64, layers[0], layers[1]);
      check_rows(s, want, n);
      check_rows(s, want, n); /* again: from the cache when there is one */
      /* Needs the store's own held-ticket limit (engram-store, issue 20). -DNO_LOCAL_HELD
       * leaves it out (for a build without it: that store hangs here). */
#ifndef NO_LOCAL_HELD
      check_held_tickets(s, want[0].layer, ENGRAM_LOCAL_MAX_TICKETS);
#endif
      if (b == 0 && cached == 0) {
        check_errors(argv[1], s);
        check_hash_and_dequantize(s);
      }
      size_t needed = 0;
      EXPECT_STATUS(engram_store_stats_json(s, NULL, 0, &needed), ENGRAM_ERR_BUFFER_SIZE);
      char *json = malloc(needed);
      EXPECT_STATUS(engram_store_stats_json(s, json, needed, NULL), ENGRAM_OK);
      CHECK(strstr(json, "\"rows_requested\"") != NULL, "stats: %s", json);
      free(json);
      EXPECT_STATUS(engram_store_reset_stats(s), ENGRAM_OK);
      /* A ticket may outlive its store. */
      engram_ticket *t = NULL;
      uint64_t one = want[0].row;
      EXPECT_STATUS(engram_store_prefetch(s, want[0].layer, &one, 1, &t), ENGRAM_OK);
      engram_store_close(s);
      const uint8_t *row = NULL;
      size_t len = 0;
      EXPECT_STATUS(engram_ticket_rows(t, &row, &len), ENGRAM_OK);
      CHECK(row && memcmp(row, want[0].bytes, want[0].len) == 0, "row after close");
      engram_ticket_free(t);
    }
  }
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
