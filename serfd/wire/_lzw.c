/*
 * serfd.wire._lzw: the C speed-up of serfd/wire/lzw.py.
 *
 * Same format, same results, same error texts as the pure-Python functions there (read
 * that module's docstring for the format: Go's compress/lzw, LSB order, literal width 8,
 * a leading clear code, a clear whenever code 4095 would be assigned). Differential
 * tests in tests/test_lzw.py hold the two together byte for byte.
 *
 * Why C: a gossip datagram is compressed by its sender and decompressed by every
 * receiver. In Python that is ~0.1 microsecond per byte each way, which at a burst of
 * joins in a 100-node cluster of Python agents on 2 cores was most of the CPU they had.
 * Here it is a few nanoseconds.
 *
 * compress(data) -> bytes
 * decompress(data, max_size) -> bytes; raises ValueError with the Python module's text
 * (lzw.py turns it into a DecodeError).
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of 3.11: one _lzw.abi3.so loads in every later CPython (a Debian 12 build
   installs on Ubuntu 24.04's 3.12 too). */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LIT_WIDTH 8
#define CLEAR_CODE 256
#define EOF_CODE 257
#define MAX_WIDTH 12
#define MAX_CODE 4095
#define TABLE_SLOTS 8192 /* power of two, twice the most entries the dictionary holds */

/* ---- compress ---------------------------------------------------------------------- */

/* A slot holds (key << 12 | code) + 1; 0 is empty. key = prefix code << 8 | next byte. */
static inline uint32_t slot_of(uint32_t key)
{
    return (key * 2654435761u) >> (32 - 13);
}

typedef struct {
    unsigned char *buf;
    Py_ssize_t len;
    uint64_t acc;
    int nbits;
} bitwriter;

static inline void put_code(bitwriter *w, uint32_t code, int width)
{
    w->acc |= (uint64_t)code << w->nbits;
    w->nbits += width;
    while (w->nbits >= 8) {
        w->buf[w->len++] = (unsigned char)(w->acc & 0xFF);
        w->acc >>= 8;
        w->nbits -= 8;
    }
}

/* A code went out: the decoder's dictionary grows by one entry, and so does ours. True
   when that filled it: a clear code went out too, and the dictionary must be emptied. */
static inline int grow_dictionary(bitwriter *w, uint32_t *hi, int *width, uint32_t *overflow)
{
    *hi += 1;
    if (*hi == *overflow) {
        *width += 1;
        *overflow <<= 1;
    }
    if (*hi == MAX_CODE) {
        put_code(w, CLEAR_CODE, *width);
        *width = LIT_WIDTH + 1;
        *hi = EOF_CODE;
        *overflow = 1u << *width;
        return 1;
    }
    return 0;
}

static PyObject *lzw_compress(PyObject *self, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = (const unsigned char *)in.buf;
    Py_ssize_t n = in.len;
    /* Every input byte costs at most one code of at most 12 bits; clears and EOF add a few. */
    Py_ssize_t cap = 2 * n + 16;
    unsigned char *buf = PyMem_Malloc(cap);
    if (buf == NULL) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    bitwriter w = {buf, 0, 0, 0};
    int width = LIT_WIDTH + 1;
    uint32_t hi = EOF_CODE;
    uint32_t overflow = 1u << width;
    put_code(&w, CLEAR_CODE, width);

    if (n > 0) {
        uint32_t *table = PyMem_Calloc(TABLE_SLOTS, sizeof(uint32_t));
        if (table == NULL) {
            PyMem_Free(buf);
            PyBuffer_Release(&in);
            return PyErr_NoMemory();
        }
        uint32_t code = data[0];
        for (Py_ssize_t i = 1; i < n; i++) {
            uint32_t byte = data[i];
            uint32_t key = (code << 8) | byte;
            uint32_t s = slot_of(key);
            uint32_t found = 0;
            for (;;) {
                uint32_t v = table[s];
                if (v == 0)
                    break;
                if (((v - 1) >> 12) == key) {
                    found = ((v - 1) & 0xFFF) + 1; /* code + 1, so 0 stays "absent" */
                    break;
                }
                s = (s + 1) & (TABLE_SLOTS - 1);
            }
            if (found) {
                code = found - 1;
                continue;
            }
            put_code(&w, code, width);
            code = byte;
            if (grow_dictionary(&w, &hi, &width, &overflow)) {
                memset(table, 0, TABLE_SLOTS * sizeof(uint32_t));
                continue;
            }
            table[s] = ((key << 12) | hi) + 1; /* s is the empty slot the probe ended on */
        }
        PyMem_Free(table);
        /* Close(): the pending code, then the counter bump that may force a clear. */
        put_code(&w, code, width);
        grow_dictionary(&w, &hi, &width, &overflow);
    }
    PyBuffer_Release(&in);
    put_code(&w, EOF_CODE, width);
    if (w.nbits > 0)
        w.buf[w.len++] = (unsigned char)(w.acc & 0xFF);
    PyObject *result = PyBytes_FromStringAndSize((const char *)buf, w.len);
    PyMem_Free(buf);
    return result;
}

/* ---- decompress -------------------------------------------------------------------- */

typedef struct {
    uint16_t prefix[MAX_CODE + 1];
    uint8_t suffix[MAX_CODE + 1];
    uint8_t first[MAX_CODE + 1];
    uint32_t length[MAX_CODE + 1];
} dictionary;

typedef struct {
    unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
} growbuf;

static int grow(growbuf *g, Py_ssize_t need)
{
    if (need <= g->cap)
        return 0;
    Py_ssize_t cap = g->cap ? g->cap : 256;
    while (cap < need)
        cap *= 2;
    unsigned char *p = PyMem_Realloc(g->buf, cap);
    if (p == NULL)
        return -1;
    g->buf = p;
    g->cap = cap;
    return 0;
}

static PyObject *lzw_decompress(PyObject *self, PyObject *args)
{
    Py_buffer in;
    Py_ssize_t max_size;
    if (!PyArg_ParseTuple(args, "y*n", &in, &max_size))
        return NULL;
    dictionary *d = PyMem_Malloc(sizeof(dictionary));
    if (d == NULL) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    for (int c = 0; c < CLEAR_CODE; c++) {
        d->prefix[c] = 0;
        d->suffix[c] = (uint8_t)c;
        d->first[c] = (uint8_t)c;
        d->length[c] = 1;
    }
    growbuf out = {NULL, 0, 0};
    const unsigned char *data = (const unsigned char *)in.buf;
    int width = LIT_WIDTH + 1;
    uint32_t mask = (1u << width) - 1;
    uint32_t hi = EOF_CODE;
    uint32_t overflow = 1u << width;
    int32_t last = -1; /* the previous code, -1 right after a clear or once the table is full */
    uint64_t acc = 0;
    int nbits = 0;
    PyObject *result = NULL;
    const char *error = NULL;
    uint32_t bad_code = 0;

    for (Py_ssize_t i = 0; i < in.len && error == NULL; i++) {
        acc |= (uint64_t)data[i] << nbits;
        nbits += 8;
        while (nbits >= width) {
            uint32_t code = (uint32_t)(acc & mask);
            acc >>= width;
            nbits -= width;
            uint32_t len;
            uint8_t head;
            int kwk = 0; /* code == hi: the previous expansion plus its own first byte */
            if (code < CLEAR_CODE) {
                len = 1;
                head = (uint8_t)code;
            } else if (code == CLEAR_CODE) {
                width = LIT_WIDTH + 1;
                mask = (1u << width) - 1;
                hi = EOF_CODE;
                overflow = 1u << width;
                last = -1;
                continue;
            } else if (code == EOF_CODE) {
                result = PyBytes_FromStringAndSize((const char *)out.buf, out.len);
                goto done;
            } else if (code < hi || (code == hi && last < 0)) {
                len = d->length[code];
                head = d->first[code];
            } else if (code == hi) {
                kwk = 1;
                len = d->length[last] + 1;
                head = d->first[last];
            } else {
                error = "invalid";
                bad_code = code;
                break;
            }
            if (last >= 0) {
                d->prefix[hi] = (uint16_t)last;
                d->suffix[hi] = head;
                d->first[hi] = d->first[last];
                d->length[hi] = d->length[last] + 1;
            }
            if (out.len + (Py_ssize_t)len > max_size) {
                error = "size";
                break;
            }
            if (grow(&out, out.len + len) < 0) {
                error = "memory";
                break;
            }
            /* Write the expansion back to front along the prefix chain. In the kwk case
               the entry for hi was just defined above as last + head: the same string. */
            uint32_t c = kwk ? hi : code;
            unsigned char *p = out.buf + out.len + len;
            for (uint32_t k = 0; k < len; k++) {
                *--p = d->suffix[c];
                c = d->prefix[c];
            }
            out.len += len;
            last = (int32_t)code;
            hi += 1;
            if (hi >= overflow) {
                if (width == MAX_WIDTH) {
                    last = -1; /* table full: no more entries until the next clear */
                    hi -= 1;
                } else {
                    width += 1;
                    mask = (1u << width) - 1;
                    overflow <<= 1;
                }
            }
        }
    }
    if (error == NULL || strcmp(error, "memory") == 0) {
        if (error == NULL)
            PyErr_SetString(PyExc_ValueError,
                            "lzw: stream ended without an end-of-data code");
        else
            PyErr_NoMemory();
    } else if (strcmp(error, "invalid") == 0) {
        PyErr_Format(PyExc_ValueError, "lzw: invalid code %u", bad_code);
    } else {
        PyErr_Format(PyExc_ValueError, "lzw: output exceeds %zd bytes", max_size);
    }
done:
    PyMem_Free(out.buf);
    PyMem_Free(d);
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef methods[] = {
    {"compress", lzw_compress, METH_O, "Compress bytes as Go's lzw.NewWriter(w, LSB, 8)."},
    {"decompress", lzw_decompress, METH_VARARGS,
     "decompress(data, max_size): a Go LZW stream back to bytes; ValueError if bad."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "serfd.wire._lzw", "LZW as Go's compress/lzw, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__lzw(void)
{
    return PyModule_Create(&module);
}
