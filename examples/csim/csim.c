/* csim: compresses and restores a buffer with zlib, the library its environment provides. */
#include <stdio.h>
#include <string.h>
#include <zlib.h>

int main(void) {
    const char *text = "heat heat heat heat heat heat heat heat";
    unsigned char packed[256], restored[256];
    uLongf packed_len = sizeof packed, restored_len = sizeof restored;
    if (compress(packed, &packed_len, (const unsigned char *)text, strlen(text) + 1) != Z_OK) return 1;
    if (uncompress(restored, &restored_len, packed, packed_len) != Z_OK) return 1;
    if (strcmp((const char *)restored, text) != 0) return 1;
    printf("ok: zlib %s, %lu bytes -> %lu\n", zlibVersion(), (unsigned long)strlen(text) + 1, (unsigned long)packed_len);
    return 0;
}
