/* Look up rows of an Engram table from C and print them as hex.
 *
 *   cc lookup.c $(pkg-config --cflags --libs engram) -o lookup
 *   ./lookup TABLE LAYER_ID ROW [ROW...]
 */
#include <stdio.h>
#include <stdlib.h>

#include <engram.h>

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s TABLE LAYER_ID ROW [ROW...]\n", argv[0]);
    return 2;
  }
  engram_store *store;
  if (engram_store_open(argv[1], NULL, &store) != ENGRAM_OK) {
    fprintf(stderr, "error: %s\n", engram_last_error());
    return 1;
  }
  size_t n = (size_t)argc - 3, row_bytes = engram_store_row_bytes(store);
  uint64_t *ids = malloc(n * sizeof *ids);
  uint8_t *rows = malloc(n * row_bytes);
  for (size_t i = 0; i < n; i++) ids[i] = strtoull(argv[3 + i], NULL, 10);
  int rc = engram_store_lookup_into(store, (uint32_t)atoi(argv[2]), ids, n, rows, n * row_bytes);
  if (rc != ENGRAM_OK) {
    fprintf(stderr, "error (%s): %s\n", engram_status_name(rc), engram_last_error());
  } else {
    for (size_t i = 0; i < n; i++) {
      printf("%llu: ", (unsigned long long)ids[i]);
      for (size_t b = 0; b < row_bytes; b++) printf("%02x", rows[i * row_bytes + b]);
      printf("\n");
    }
  }
  free(ids);
  free(rows);
  engram_store_close(store);
  return rc == ENGRAM_OK ? 0 : 1;
}
