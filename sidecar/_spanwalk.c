/* sidecar._spanwalk: where an OTLP trace request's spans and their attributes lie in its
 * bytes, and splicing bytes onto spans, for the cost processor.
 *
 * Written by hand, in C, because no library does it: the protobuf runtime (upb) parses a
 * request into messages but has no public API for field offsets, and reading the few
 * attributes a processor needs through its message wrappers, or walking the wire in
 * Python, costs microseconds per span (the Python walk this replaced cost ~9 µs a span in
 * the cost processor, bench/cost_bench.py);
 * this walk, with the objects it hands back, costs under 1 µs a span.
 *
 * What it reads is what the protobuf parser reads: a field with the wrong wire type is an
 * unknown field and skipped, a scalar field given twice keeps the last value, and bytes
 * the parser would refuse (truncation, groups, a length past its message) raise
 * ValueError, so the caller takes its general path. A KeyValue given its key or value
 * twice is flagged rather than merged; so is a matched key given twice in one span.
 *
 * Every read is bounds-checked against the end of the enclosing message; nothing is
 * written into the input. Fuzzed with atheris (tests/fuzz) and compared with the protobuf
 * library on random requests (tests/unit/processors/test_spanwalk.py). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- reading the wire ------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

/* A varint; 0 when truncated or longer than 10 bytes. */
static int read_varint_slow(Reader *r, uint64_t *out) {
    uint64_t value = 0;
    int shift = 0;
    while (r->p < r->end && shift < 70) {
        uint8_t b = *r->p++;
        value |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = value;
            return 1;
        }
        shift += 7;
    }
    return 0;
}

static inline __attribute__((always_inline)) int read_varint(Reader *r, uint64_t *out) {
    if (r->p < r->end && *r->p < 0x80) { /* nearly every tag and length */
        *out = *r->p++;
        return 1;
    }
    return read_varint_slow(r, out);
}

typedef struct {
    uint32_t number;
    uint32_t wire;
    const uint8_t *start; /* first byte of the field's tag */
    const uint8_t *data;  /* length-delimited: content; fixed: the value's bytes */
    const uint8_t *data_end;
    uint64_t varint; /* wire type 0 */
} Field;

/* The next field of a message; 1 read, 0 at the end, -1 malformed (exception set). */
static inline __attribute__((always_inline)) int next_field(Reader *r, Field *f) {
    if (r->p >= r->end)
        return 0;
    f->start = r->p;
    uint64_t tag;
    if (!read_varint(r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad tag");
        return -1;
    }
    f->number = (uint32_t)(tag >> 3);
    f->wire = (uint32_t)(tag & 7);
    switch (f->wire) {
    case 2: {
        uint64_t length;
        if (!read_varint(r, &length))
            goto truncated;
        if (length > (uint64_t)(r->end - r->p))
            goto truncated;
        f->data = r->p;
        r->p += length;
        f->data_end = r->p;
        return 1;
    }
    case 0:
        if (!read_varint(r, &f->varint))
            goto truncated;
        f->data = f->data_end = r->p;
        return 1;
    case 1:
        if (r->end - r->p < 8)
            goto truncated;
        f->data = r->p;
        r->p += 8;
        f->data_end = r->p;
        return 1;
    case 5:
        if (r->end - r->p < 4)
            goto truncated;
        f->data = r->p;
        r->p += 4;
        f->data_end = r->p;
        return 1;
    default:
        PyErr_SetString(PyExc_ValueError, "unsupported wire type");
        return -1;
    }
truncated:
    PyErr_SetString(PyExc_ValueError, "truncated field");
    return -1;
}

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- check: whether the protobuf parser takes a request, without parsing it ------- */

/* The receivers parse every request with upb only to validate and count it (a parse of
 * a 100-span request is ~14,000 instructions a span, a third of the default pipeline's
 * work in process). `check` reads the wire against a schema made from the request's
 * descriptors (sidecar/wirecheck.py) and says the request is valid only when the parser
 * surely takes it: every field of a known number has its declared wire type (repeated
 * numbers packed or not), every varint, length and nested message is whole, every proto3
 * string is valid UTF-8, unknown fields are plain (varint, fixed, length-delimited) and
 * nesting stays shallow. Anything else (groups, a wrong wire type, field number 0, deep
 * nesting, odd varints) is "not sure" and the caller parses with upb, which decides: so
 * a request is refused only when the parser refuses it, and one `check` passes is one
 * the parser takes (tested against upb on mangled requests, tests/unit/test_wirecheck.py,
 * and fuzzed). */

enum { K_UNKNOWN = 0, K_VARINT, K_FIXED64, K_FIXED32, K_BYTES, K_STRING, K_MESSAGE };

#define CHECK_MAX_DEPTH 32 /* deeper: not sure (upb's own limit is 100) */
#define CHECK_MAX_NUMBER 64 /* field numbers a schema message may declare */

typedef struct {
    uint8_t kind;
    uint8_t repeated;
    uint8_t item; /* each occurrence is one item (a span, a log record) */
    int32_t child; /* K_MESSAGE: its message's index */
} CheckField;

typedef struct {
    CheckField fields[CHECK_MAX_NUMBER + 1]; /* by field number; 0 unused */
} CheckMessage;

typedef struct {
    CheckMessage *messages;
    Py_ssize_t count;
} CheckSchema;

static const char CHECK_CAPSULE[] = "sidecar._spanwalk.schema";

static void schema_free(PyObject *capsule) {
    CheckSchema *schema = PyCapsule_GetPointer(capsule, CHECK_CAPSULE);
    if (schema != NULL) {
        PyMem_Free(schema->messages);
        PyMem_Free(schema);
    }
}

/* schema(messages) -> capsule: messages[i] is a sequence of (number, kind, repeated,
 * child, item) for message i; message 0 is the request. */
static PyObject *schema(PyObject *module, PyObject *arg) {
    (void)module;
    PyObject *messages = PySequence_Fast(arg, "messages must be a sequence");
    if (messages == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(messages);
    CheckSchema *out = PyMem_Calloc(1, sizeof(CheckSchema));
    CheckMessage *table = PyMem_Calloc((size_t)(n ? n : 1), sizeof(CheckMessage));
    if (out == NULL || table == NULL) {
        PyMem_Free(out);
        PyMem_Free(table);
        Py_DECREF(messages);
        return PyErr_NoMemory();
    }
    out->messages = table;
    out->count = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fields = PySequence_Fast(PySequence_Fast_GET_ITEM(messages, i),
                                           "a message is a sequence of fields");
        if (fields == NULL)
            goto fail;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(fields); j++) {
            int number, kind, repeated, child, item;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fields, j), "iiiii", &number, &kind,
                                  &repeated, &child, &item)) {
                Py_DECREF(fields);
                goto fail;
            }
            if (number < 1 || number > CHECK_MAX_NUMBER || kind < K_VARINT ||
                kind > K_MESSAGE || (kind == K_MESSAGE && (child < 0 || child >= n))) {
                Py_DECREF(fields);
                PyErr_SetString(PyExc_ValueError, "bad schema field");
                goto fail;
            }
            CheckField *f = &table[i].fields[number];
            f->kind = (uint8_t)kind;
            f->repeated = repeated != 0;
            f->item = item != 0;
            f->child = child;
        }
        Py_DECREF(fields);
    }
    Py_DECREF(messages);
    PyObject *capsule = PyCapsule_New(out, CHECK_CAPSULE, schema_free);
    if (capsule == NULL) {
        PyMem_Free(table);
        PyMem_Free(out);
    }
    return capsule;
fail:
    Py_DECREF(messages);
    PyMem_Free(table);
    PyMem_Free(out);
    return NULL;
}

/* Whether p[0:n] is all ASCII: 8 bytes at a time, the last word overlapping the one
 * before it (most strings a request holds are short ASCII keys and values). */
static inline int all_ascii(const uint8_t *p, Py_ssize_t n) {
    uint64_t word = 0, seen = 0;
    if (n < 8) {
        memcpy(&word, p, (size_t)n);
        return (word & 0x8080808080808080ULL) == 0;
    }
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, p + i, 8);
        seen |= word;
    }
    memcpy(&word, p + n - 8, 8);
    seen |= word;
    return (seen & 0x8080808080808080ULL) == 0;
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF): what upb accepts in a
 * proto3 string. ASCII runs go 8 bytes at a time. */
static int utf8_valid(const uint8_t *p, const uint8_t *end) {
    if (all_ascii(p, end - p))
        return 1;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if ((word & 0x8080808080808080ULL) == 0) {
                p += 8;
                continue;
            }
        }
        uint8_t b = *p;
        if (b < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t left = end - p;
        if (b >= 0xC2 && b <= 0xDF) {
            if (left < 2 || (p[1] & 0xC0) != 0x80)
                return 0;
            p += 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
                return 0;
            if ((b == 0xE0 && p[1] < 0xA0) || (b == 0xED && p[1] > 0x9F))
                return 0; /* overlong; surrogate */
            p += 3;
        } else if (b >= 0xF0 && b <= 0xF4) {
            if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
                (p[3] & 0xC0) != 0x80)
                return 0;
            if ((b == 0xF0 && p[1] < 0x90) || (b == 0xF4 && p[1] > 0x8F))
                return 0; /* overlong; past U+10FFFF */
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* A varint the parser surely takes: a value of at most 10 bytes, the 10th holding one
 * bit; a tag or a length of at most 5 (upb refuses longer ones, even for small values:
 * found by fuzzing). */
static inline __attribute__((always_inline)) int check_varint_n(Reader *r, uint64_t *out,
                                                                int most) {
    if (r->p < r->end && *r->p < 0x80) {
        *out = *r->p++;
        return 1;
    }
    uint64_t value = 0;
    for (int i = 0; i < most && r->p < r->end; i++) {
        uint8_t b = *r->p++;
        if (i == 9 && b > 1)
            return 0;
        value |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b < 0x80) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

#define check_varint(r, out) check_varint_n((r), (out), 10)
#define check_size(r, out) check_varint_n((r), (out), 5)

/* 1: the parser takes this message (items added to *items); 0: not sure. */
static int check_message(const CheckSchema *schema, Py_ssize_t index, const uint8_t *p,
                         const uint8_t *end, int depth, Py_ssize_t *items) {
    if (depth > CHECK_MAX_DEPTH)
        return 0;
    const CheckMessage *m = &schema->messages[index];
    Reader r = {p, end};
    while (r.p < r.end) {
        uint64_t tag;
        if (!check_size(&r, &tag) || tag > 0xFFFFFFFFULL)
            return 0;
        uint64_t number = tag >> 3;
        unsigned wire = (unsigned)(tag & 7);
        if (number == 0)
            return 0;
        const CheckField *f = number <= CHECK_MAX_NUMBER ? &m->fields[number] : NULL;
        int kind = f != NULL ? f->kind : K_UNKNOWN;
        uint64_t value;
        switch (wire) {
        case 0:
            if (kind != K_UNKNOWN && kind != K_VARINT)
                return 0;
            if (!check_varint(&r, &value))
                return 0;
            break;
        case 1:
            if (kind != K_UNKNOWN && kind != K_FIXED64)
                return 0;
            if (r.end - r.p < 8)
                return 0;
            r.p += 8;
            break;
        case 5:
            if (kind != K_UNKNOWN && kind != K_FIXED32)
                return 0;
            if (r.end - r.p < 4)
                return 0;
            r.p += 4;
            break;
        case 2: {
            if (!check_size(&r, &value) || value > (uint64_t)(r.end - r.p) ||
                value > 0x7FFFFFFF)
                return 0;
            const uint8_t *data = r.p, *data_end = r.p + value;
            r.p = data_end;
            switch (kind) {
            case K_UNKNOWN:
            case K_BYTES:
                break;
            case K_STRING:
                if (!utf8_valid(data, data_end))
                    return 0;
                break;
            case K_MESSAGE:
                if (!check_message(schema, f->child, data, data_end, depth + 1, items))
                    return 0;
                break;
            case K_VARINT: {
                if (!f->repeated)
                    return 0;
                Reader packed = {data, data_end};
                while (packed.p < packed.end) {
                    if (!check_varint(&packed, &value))
                        return 0;
                }
                break;
            }
            case K_FIXED64:
            case K_FIXED32:
                if (!f->repeated || value % (kind == K_FIXED64 ? 8 : 4) != 0)
                    return 0;
                break;
            default:
                return 0;
            }
            break;
        }
        default:
            return 0; /* groups (3, 4) and wire types 6, 7 */
        }
        if (kind != K_UNKNOWN && f->item)
            (*items)++;
    }
    return 1;
}

/* check(payload, schema) -> items, or -1: not sure (parse it to know) */
static PyObject *check(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *capsule;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O", &view, &capsule))
        return NULL;
    CheckSchema *schema = PyCapsule_GetPointer(capsule, CHECK_CAPSULE);
    if (schema == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t items = 0;
    int ok = schema->count > 0 &&
             check_message(schema, 0, view.buf, (const uint8_t *)view.buf + view.len, 0, &items);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(ok ? items : -1);
}

/* ---- Matcher: a set of attribute keys, each with an id ---------------------------- */

typedef struct {
    const char *key; /* into the Matcher's owned buffer */
    uint64_t hash;
    Py_ssize_t len;
    int id;
    int trigger;               /* a span holding this key is reported */
    int count;                 /* a count: its value is left out of the span's key */
    int unkeyed;               /* its value is left out of the span's key (not a count) */
    PyObject *trigger_values;  /* tuple of AnyValue bytes that make it a trigger, or NULL */
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t mask; /* slots - 1, a power of two minus one */
    char *buffer;
    int count;
    uint64_t lengths[4]; /* bit n: a key of n bytes (n < 256); keys longer: bit 255 */
} Matcher;

static inline int length_bit(Py_ssize_t n) { return n < 255 ? (int)n : 255; }

/* A hash of a key's length and its first and last 8 bytes: constant time (most keys
 * an attribute walk meets are not in the set, and share long prefixes with ones that are,
 * so the ends tell them apart; a collision only costs a memcmp). */
static inline uint64_t key_hash(const uint8_t *p, Py_ssize_t n) {
    uint64_t head = 0, tail = 0;
    if (n >= 8) {
        memcpy(&head, p, 8);
        memcpy(&tail, p + n - 8, 8);
    } else {
        memcpy(&head, p, (size_t)n);
    }
    uint64_t h = (head * 0x9E3779B97F4A7C15ULL) ^ (tail * 0xC2B2AE3D27D4EB4FULL) ^ (uint64_t)n;
    return h ^ (h >> 29);
}

static inline const Slot *matcher_find(const Matcher *m, const uint8_t *key, Py_ssize_t n) {
    int bit = length_bit(n);
    if (!(m->lengths[bit >> 6] & (1ULL << (bit & 63))))
        return NULL; /* no key of this length: most keys a walk meets */
    uint64_t h = key_hash(key, n);
    size_t i = (size_t)h & m->mask;
    for (;;) {
        const Slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->hash == h && s->len == n && memcmp(s->key, key, (size_t)n) == 0)
            return s;
        i = (i + 1) & m->mask;
    }
}

static void matcher_dealloc(Matcher *self) {
    if (self->slots != NULL) {
        for (size_t i = 0; i <= self->mask; i++)
            Py_XDECREF(self->slots[i].trigger_values);
        PyMem_Free(self->slots);
    }
    PyMem_Free(self->buffer);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Matcher(keys: Sequence[bytes], triggers: Sequence[object], counts: Sequence[bytes] = (),
 *         unkeyed: Sequence[bytes] = ()):
 * key i gets id i; triggers[i] is True (a span holding key i is reported), False, or a
 * tuple of serialized AnyValues (reported when the key holds one of them); the keys in
 * `counts` are counts (see walk); the values of the keys in `unkeyed` are given but left
 * out of the span's memo key (its id stays in). */
static int mark_slots(Matcher *self, PyObject *arg, int unkeyed) {
    if (arg == NULL)
        return 0;
    PyObject *seq = PySequence_Fast(arg, unkeyed ? "unkeyed must be a sequence"
                                                 : "counts must be a sequence");
    if (seq == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *key = PySequence_Fast_GET_ITEM(seq, i);
        Slot *slot = PyBytes_Check(key)
                         ? (Slot *)matcher_find(self, (const uint8_t *)PyBytes_AS_STRING(key),
                                                PyBytes_GET_SIZE(key))
                         : NULL;
        if (slot == NULL || (slot->count && unkeyed)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError,
                            slot != NULL ? "a key is both a count and unkeyed"
                            : unkeyed    ? "an unkeyed key is not one of the keys"
                                         : "a count is not one of the keys");
            return -1;
        }
        if (unkeyed)
            slot->unkeyed = 1;
        else
            slot->count = 1;
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *matcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"keys", "triggers", "counts", "unkeyed", NULL};
    PyObject *keys_arg, *triggers_arg, *counts_arg = NULL, *unkeyed_arg = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO", names, &keys_arg, &triggers_arg,
                                     &counts_arg, &unkeyed_arg))
        return NULL;
    PyObject *keys = PySequence_Fast(keys_arg, "keys must be a sequence");
    if (keys == NULL)
        return NULL;
    PyObject *triggers = PySequence_Fast(triggers_arg, "triggers must be a sequence");
    if (triggers == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    Matcher *self = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
    if (n != PySequence_Fast_GET_SIZE(triggers) || n > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "keys and triggers differ in length");
        goto fail;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PySequence_Fast_GET_ITEM(keys, i);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            goto fail;
        }
        total += PyBytes_GET_SIZE(key);
    }
    self = (Matcher *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto fail;
    size_t size = 16;
    while (size < (size_t)n * 4) /* a quarter full: a miss ends at the first slot or two */
        size <<= 1;
    self->slots = PyMem_Calloc(size, sizeof(Slot));
    self->mask = size - 1;
    self->buffer = PyMem_Malloc((size_t)total + 1);
    if (self->slots == NULL || self->buffer == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    char *at = self->buffer;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PySequence_Fast_GET_ITEM(keys, i);
        const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(key);
        Py_ssize_t len = PyBytes_GET_SIZE(key);
        if (matcher_find(self, data, len) != NULL) {
            PyErr_SetString(PyExc_ValueError, "duplicate key");
            goto fail;
        }
        memcpy(at, data, (size_t)len);
        uint64_t h = key_hash(data, len);
        size_t j = (size_t)h & self->mask;
        while (self->slots[j].key != NULL)
            j = (j + 1) & self->mask;
        Slot *slot = &self->slots[j];
        slot->key = at;
        slot->hash = h;
        slot->len = len;
        int bit = length_bit(len);
        self->lengths[bit >> 6] |= 1ULL << (bit & 63);
        slot->id = (int)i;
        PyObject *trigger = PySequence_Fast_GET_ITEM(triggers, i);
        if (PyTuple_Check(trigger)) {
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(trigger); k++) {
                if (!PyBytes_Check(PyTuple_GET_ITEM(trigger, k))) {
                    PyErr_SetString(PyExc_TypeError, "trigger values must be bytes");
                    goto fail;
                }
            }
            Py_INCREF(trigger);
            slot->trigger_values = trigger;
        } else {
            int truth = PyObject_IsTrue(trigger);
            if (truth < 0)
                goto fail;
            slot->trigger = truth;
        }
        self->count++;
        at += len;
    }
    if (mark_slots(self, counts_arg, 0) < 0 || mark_slots(self, unkeyed_arg, 1) < 0)
        goto fail;
    Py_DECREF(keys);
    Py_DECREF(triggers);
    return (PyObject *)self;
fail:
    Py_XDECREF(self);
    Py_DECREF(keys);
    Py_DECREF(triggers);
    return NULL;
}

static PyType_Slot matcher_slots[] = {
    {Py_tp_new, matcher_new},
    {Py_tp_dealloc, matcher_dealloc},
    {Py_tp_doc, "A set of attribute keys, numbered in the order given."},
    {0, NULL},
};

static PyType_Spec matcher_spec = {
    "sidecar._spanwalk.Matcher", sizeof(Matcher), 0, Py_TPFLAGS_DEFAULT, matcher_slots,
};

/* ---- the walk --------------------------------------------------------------------- */

#define MAX_MATCHED 64 /* matched attributes reported per span (more: flagged, general path) */

enum { FLAG_DUPLICATE = 1, FLAG_ODD = 2, FLAG_MANY = 4 };

typedef struct {
    int ids[MAX_MATCHED];
    int counts[MAX_MATCHED];
    int unkeyed[MAX_MATCHED]; /* a value left out of the memo key (a count's too) */
    const uint8_t *values[MAX_MATCHED];
    const uint8_t *value_ends[MAX_MATCHED];
    int count;
    int flags;
    int triggered;
} Matched;

static int slot_triggers(const Slot *slot, const uint8_t *v, const uint8_t *v_end) {
    if (slot->trigger)
        return 1;
    if (slot->trigger_values == NULL)
        return 0;
    Py_ssize_t n = v_end - v;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(slot->trigger_values); k++) {
        PyObject *want = PyTuple_GET_ITEM(slot->trigger_values, k);
        if (PyBytes_GET_SIZE(want) == n && memcmp(PyBytes_AS_STRING(want), v, (size_t)n) == 0)
            return 1;
    }
    return 0;
}

/* One KeyValue's content: record it when its key is in the matcher. 0 ok, -1 malformed. */
static int match_attribute(const Matcher *m, const uint8_t *p, const uint8_t *end,
                           Matched *out) {
    const uint8_t *key = NULL, *key_end = NULL, *value = NULL, *value_end = NULL;
    /* the form every encoder writes: key (1-byte length), then the value */
    if (end - p >= 2 && p[0] == 0x0A && p[1] < 0x80 && p[1] <= end - p - 2) {
        key = p + 2;
        key_end = key + p[1];
        if (key_end == end) {
            value = value_end = NULL;
            goto found;
        }
        if (end - key_end >= 2 && key_end[0] == 0x12) {
            Py_ssize_t rest = end - key_end;
            if (key_end[1] < 0x80 && key_end[1] == rest - 2) {
                value = key_end + 2;
                value_end = end;
                goto found;
            }
            if (rest >= 3 && key_end[1] >= 0x80 && key_end[2] < 0x80 &&
                ((key_end[1] & 0x7F) | key_end[2] << 7) == rest - 3) {
                value = key_end + 3;
                value_end = end;
                goto found;
            }
        }
        key = key_end = NULL;
    }
    Reader r = {p, end};
    Field f;
    int keys = 0, values = 0, rc;
    while ((rc = next_field(&r, &f)) == 1) {
        if (f.wire != 2)
            continue;
        if (f.number == 1) {
            key = f.data;
            key_end = f.data_end;
            keys++;
        } else if (f.number == 2) {
            value = f.data;
            value_end = f.data_end;
            values++;
        }
    }
    if (rc < 0)
        return -1;
    if (keys > 1 || values > 1)
        out->flags |= FLAG_ODD; /* the parser keeps the last key and merges the values */
found:
    if (key == NULL)
        return 0;
    const Slot *slot = matcher_find(m, key, key_end - key);
    if (slot == NULL)
        return 0;
    if (value == NULL)
        value = value_end = end; /* no value: an empty AnyValue */
    for (int i = 0; i < out->count; i++) {
        if (out->ids[i] == slot->id)
            out->flags |= FLAG_DUPLICATE;
    }
    if (!out->triggered && slot_triggers(slot, value, value_end))
        out->triggered = 1;
    if (out->count == MAX_MATCHED) {
        out->flags |= FLAG_MANY;
        return 0;
    }
    out->ids[out->count] = slot->id;
    out->counts[out->count] = slot->count;
    out->unkeyed[out->count] = slot->count | slot->unkeyed;
    out->values[out->count] = value;
    out->value_ends[out->count] = value_end;
    out->count++;
    return 0;
}

static PyObject *matched_tuple(const Matched *m, int ids) {
    PyObject *t = PyTuple_New(m->count);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < m->count; i++) {
        PyObject *item = ids ? PyLong_FromLong(m->ids[i])
                             : PyBytes_FromStringAndSize((const char *)m->values[i],
                                                         m->value_ends[i] - m->values[i]);
        if (item == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, item);
    }
    return t;
}

/* The span's memo key: per matched attribute in wire order, its id (varint) and, but for
 * counts and unkeyed keys, its value's length (varint) and bytes. Equal keys: equal ids in
 * the same order, equal values but for those. */
static PyObject *matched_key(const Matched *m) {
    if (m->count == 0)
        return PyBytes_FromStringAndSize("", 0);
    Py_ssize_t size = 0;
    for (int i = 0; i < m->count; i++) {
        size += 10;
        if (!m->unkeyed[i])
            size += 10 + (m->value_ends[i] - m->values[i]);
    }
    uint8_t small[1024];
    small[0] = 0; /* (gcc cannot tell the loop writes what is read) */
    uint8_t *buf = size <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)size);
    if (buf == NULL)
        return PyErr_NoMemory();
    uint8_t *at = buf;
    for (int i = 0; i < m->count; i++) {
        uint64_t v = (uint64_t)m->ids[i];
        while (v >= 0x80) {
            *at++ = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        *at++ = (uint8_t)v;
        if (m->unkeyed[i])
            continue;
        Py_ssize_t n = m->value_ends[i] - m->values[i];
        v = (uint64_t)n;
        while (v >= 0x80) {
            *at++ = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        *at++ = (uint8_t)v;
        memcpy(at, m->values[i], (size_t)n);
        at += n;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)buf, at - buf);
    if (buf != small)
        PyMem_Free(buf);
    return out;
}

/* The count values in wire order: an int where the AnyValue is exactly an int_value (as
 * the parser reads it: int64), else its serialized bytes. */
static PyObject *matched_counts(const Matched *m) {
    int n = 0;
    for (int i = 0; i < m->count; i++)
        n += m->counts[i];
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    int k = 0;
    for (int i = 0; i < m->count; i++) {
        if (!m->counts[i])
            continue;
        const uint8_t *v = m->values[i], *end = m->value_ends[i];
        PyObject *item = NULL;
        if (end - v >= 2 && v[0] == 0x18) {
            Reader r = {v + 1, end};
            uint64_t value;
            if (read_varint(&r, &value) && r.p == end)
                item = PyLong_FromLongLong((long long)value);
        }
        if (item == NULL && !PyErr_Occurred())
            item = PyBytes_FromStringAndSize((const char *)v, end - v);
        if (item == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k++, item);
    }
    return t;
}

static int add_float(PyObject *list, Py_ssize_t i, double amount);

/* ---- the cost processor's hot path ------------------------------------------------- */

/* A model call whose reading the cost processor holds ready (`LlmCost._hot`): its memo
 * key names one tuple of these fields, made by the processor the first time it priced
 * such a call. The walk prices it here, as `LlmCost.process`'s inline path does (tests
 * compare the two), instead of handing the span back: a span handed back costs ~20
 * Python objects and ~2 µs of bytecode in the daemon, this path ~150 ns. Anything the
 * entry does not cover (another day, counts that are not plain ints in range, a product
 * past 2^53, a series or cell not made yet) hands the span back as before. */
enum {
    HOT_DAY, HOT_GENERATION, HOT_SERVICE, HOT_TENANT, HOT_REMEMBER, HOT_RATE_IN, HOT_RATE_OUT,
    HOT_SCALE, HOT_IN_AT, HOT_OUT_AT, HOT_HEAD, HOT_MID, HOT_TAIL, HOT_OUT_KEY, HOT_END_KEY,
    HOT_SERIES, HOT_FIELDS
};
enum { FLAG_REMEMBER = 8 }; /* a record that only says: the trace's agent, in `values` */
#define DAY_NS 86400000000000ULL
#define EXACT_LIMIT (1LL << 53) /* integers up to this are exact doubles */
#define MAX_BOUNDS 64
#define TOUCHED_BITS 4096

typedef struct {
    PyObject *entries;   /* dict: span memo key -> hot entry, or (service, tenant) -> one */
    PyObject *resources; /* dict: resource memo key -> (service, tenant) */
    PyObject *agents;    /* trace id -> agent (a dict or OrderedDict); NULL: none kept */
    PyObject *edits;     /* list: (content start, attribute bytes) per call priced here */
    long long generation;
    long long max_tokens;
    Py_ssize_t agent_limit; /* the map's entries at most */
    double bounds[MAX_BOUNDS];
    Py_ssize_t nbounds;
    /* the current resource's (service, tenant); service NULL: no hot path for its spans */
    PyObject *service;
    PyObject *tenant;
    PyObject *pair; /* the (service, tenant) tuple they came in, or NULL */
    /* the trace ids of this request's spans handed back so far, a bit per hash: a call
     * priced here reads the trace's agent as it stands only if no earlier span of the
     * request may have changed it (else it hands that decision back, in order) */
    uint8_t touched[TOUCHED_BITS / 8];
} Hot;

static inline unsigned touched_bit(const uint8_t *trace_id, Py_ssize_t n) {
    return n >= 8 ? (unsigned)(load_le64(trace_id) % TOUCHED_BITS) : 0;
}

static void touch(Hot *h, const uint8_t *trace_id, Py_ssize_t n) {
    unsigned bit = touched_bit(trace_id, n);
    h->touched[bit >> 3] |= (uint8_t)(1u << (bit & 7));
}

static int touched(const Hot *h, const uint8_t *trace_id, Py_ssize_t n) {
    unsigned bit = touched_bit(trace_id, n);
    return (h->touched[bit >> 3] >> (bit & 7)) & 1;
}

/* A count value as the walk hands it to Python as an int: an AnyValue that is exactly an
 * int_value. 1 with *out set, 0 otherwise. */
static int plain_int(const uint8_t *v, const uint8_t *end, long long *out) {
    if (end - v < 2 || v[0] != 0x18)
        return 0;
    Reader r = {v + 1, end};
    uint64_t value;
    if (!read_varint(&r, &value) || r.p != end)
        return 0;
    *out = (long long)value;
    return 1;
}

static void put_double(uint8_t *at, double d) { /* little-endian, as struct's "<d" */
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    for (int i = 0; i < 8; i++)
        at[i] = (uint8_t)(bits >> (8 * i));
}

static int small_int(PyObject *o, long long *out) {
    *out = PyLong_AsLongLong(o);
    return !(*out == -1 && PyErr_Occurred());
}

/* `LlmCost._remember(trace_id, remember)` as the inline path asks for it, in wire order:
 * here when no span of the request handed back so far may have changed the trace's agent,
 * else as a REMEMBER record among the handed-back spans. (One difference: the map's
 * oldest entries, dropped past its limit, may be others than in a strict wire order when
 * spans handed back insert new traces too.) 0 ok, -1 error. */
static int hot_remember(Hot *h, PyObject *remember, Py_ssize_t resource,
                        Py_ssize_t content_start, Py_ssize_t content_end,
                        const uint8_t *trace_id, Py_ssize_t trace_len, uint64_t start_ns,
                        uint64_t end_ns, PyObject *spans) {
    if (remember == Py_None || h->agents == NULL || trace_len != 16)
        return 0; /* nothing to remember, or `_remember` keeps nothing */
    if (touched(h, trace_id, trace_len)) {
        PyObject *record = Py_BuildValue(
            "(nnny#KKOOiiyN)", resource, content_start, content_end, (const char *)trace_id,
            trace_len, (unsigned long long)start_ns, (unsigned long long)end_ns, Py_None,
            remember, FLAG_REMEMBER, 0, "", PyTuple_New(0));
        if (record == NULL)
            return -1;
        int rc = PyList_Append(spans, record);
        Py_DECREF(record);
        return rc;
    }
    PyObject *tid = PyBytes_FromStringAndSize((const char *)trace_id, trace_len);
    if (tid == NULL)
        return -1;
    PyObject *now = PyDict_GetItemWithError(h->agents, tid);
    int equal = now == NULL ? 0 : now == remember ? 1
                : PyObject_RichCompareBool(now, remember, Py_EQ);
    if (equal != 0 || PyErr_Occurred()) {
        Py_DECREF(tid);
        return equal < 0 || PyErr_Occurred() ? -1 : 0;
    }
    int rc = PyObject_SetItem(h->agents, tid, remember); /* keeps an OrderedDict's order */
    Py_DECREF(tid);
    if (rc < 0)
        return -1;
    if (PyObject_Length(h->agents) > h->agent_limit) {
        PyObject *dropped = PyObject_CallMethod(h->agents, "popitem", "O", Py_False);
        if (dropped == NULL)
            return -1;
        Py_DECREF(dropped);
    }
    return 0;
}

/* 1: priced here; 0: not covered (the caller hands the span back); -1: error. */
static int hot_span(Hot *h, const Matched *m, PyObject *key, Py_ssize_t content_start,
                    const uint8_t *trace_id, Py_ssize_t trace_len, uint64_t start_ns,
                    uint64_t end_ns, PyObject *spans, Py_ssize_t resource,
                    Py_ssize_t content_end) {
    PyObject *e = PyDict_GetItemWithError(h->entries, key);
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (PyDict_CheckExact(e)) { /* a call met under several (service, tenant): one each */
        if (h->pair == NULL)
            return 0;
        e = PyDict_GetItemWithError(e, h->pair);
        if (e == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(e)) {
        PyErr_SetString(PyExc_TypeError, "a hot entry is a tuple (or a dict of them)");
        return -1;
    }
    if (PyTuple_GET_SIZE(e) == 1) /* (remember,): a span that names its trace's agent only */
        return hot_remember(h, PyTuple_GET_ITEM(e, 0), resource, content_start, content_end,
                            trace_id, trace_len, start_ns, end_ns, spans) < 0 ? -1 : 1;
    if (PyTuple_GET_SIZE(e) != HOT_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "a hot entry is a tuple of 1 or 16 fields");
        return -1;
    }
#define F(i) PyTuple_GET_ITEM(e, i)
    long long day, generation, rate_in, rate_out, scale, in_at, out_at;
    if (!small_int(F(HOT_DAY), &day) || !small_int(F(HOT_GENERATION), &generation) ||
        !small_int(F(HOT_RATE_IN), &rate_in) || !small_int(F(HOT_RATE_OUT), &rate_out) ||
        !small_int(F(HOT_SCALE), &scale) || !small_int(F(HOT_IN_AT), &in_at) ||
        !small_int(F(HOT_OUT_AT), &out_at))
        return -1;
    if ((uint64_t)day != start_ns / DAY_NS || generation != h->generation ||
        F(HOT_SERVICE) != h->service || F(HOT_TENANT) != h->tenant)
        return 0;
    if (rate_in < 0 || rate_out < 0 || scale <= 0 || rate_in > EXACT_LIMIT ||
        rate_out > EXACT_LIMIT || scale > EXACT_LIMIT)
        return 0;
    long long n_in = 0, n_out = 0;
    int k = 0, have_in = in_at < 0, have_out = out_at < 0;
    for (int i = 0; i < m->count; i++) {
        if (!m->counts[i])
            continue;
        if (k == in_at) {
            if (!plain_int(m->values[i], m->value_ends[i], &n_in))
                return 0;
            have_in = 1;
        }
        if (k == out_at) {
            if (!plain_int(m->values[i], m->value_ends[i], &n_out))
                return 0;
            have_out = 1;
        }
        k++;
    }
    if (!have_in || !have_out || n_in < 0 || n_out < 0 || n_in > h->max_tokens ||
        n_out > h->max_tokens)
        return 0;
    __int128 plain = (__int128)n_in * rate_in, part = (__int128)n_out * rate_out;
    if (plain + part > EXACT_LIMIT)
        return 0; /* Python's int / int rounds correctly; so do doubles, exact below this */
    PyObject *series = F(HOT_SERIES);
    if (!PyList_CheckExact(series) || PyList_GET_SIZE(series) != 6)
        return 0;
    PyObject *calls = PyList_GET_ITEM(series, 1), *cost = PyList_GET_ITEM(series, 2);
    PyObject *tokens = PyList_GET_ITEM(series, 3), *row = PyList_GET_ITEM(series, 4);
    if (!PyList_CheckExact(calls) || PyList_GET_SIZE(calls) != 1 || !PyList_CheckExact(cost) ||
        PyList_GET_SIZE(cost) != 1 || !PyList_CheckExact(tokens) ||
        PyList_GET_SIZE(tokens) < 2 || !PyList_CheckExact(row) ||
        PyList_GET_SIZE(row) != h->nbounds + 2)
        return 0; /* a cell not made yet (None): the caller makes it */
    PyObject *in_cell = PyList_GET_ITEM(tokens, 0), *out_cell = PyList_GET_ITEM(tokens, 1);
    if ((n_in && (!PyList_CheckExact(in_cell) || PyList_GET_SIZE(in_cell) != 1)) ||
        (n_out && (!PyList_CheckExact(out_cell) || PyList_GET_SIZE(out_cell) != 1)))
        return 0;
    PyObject *pieces[5] = {F(HOT_HEAD), F(HOT_MID), F(HOT_TAIL), F(HOT_OUT_KEY),
                           F(HOT_END_KEY)};
    Py_ssize_t size = 32;
    for (int i = 0; i < 5; i++) {
        if (!PyBytes_CheckExact(pieces[i])) {
            PyErr_SetString(PyExc_TypeError, "a hot entry's pieces are bytes");
            return -1;
        }
        size += PyBytes_GET_SIZE(pieces[i]);
    }

    PyObject *remember = F(HOT_REMEMBER);
    if (hot_remember(h, remember, resource, content_start, content_end, trace_id, trace_len,
                     start_ns, end_ns, spans) < 0)
        return -1;

    double denominator = (double)scale;
    double total = (double)(long long)(plain + part) / denominator;
    double plain_usd = (double)(long long)plain / denominator;
    double part_usd = (double)(long long)part / denominator;
    PyObject *added = PyBytes_FromStringAndSize(NULL, size);
    if (added == NULL)
        return -1;
    uint8_t *at = (uint8_t *)PyBytes_AS_STRING(added);
    double doubles[4] = {total, total, plain_usd, part_usd};
    for (int i = 0; i < 5; i++) { /* head, total, mid, total, tail, in, out key, out, end */
        Py_ssize_t n = PyBytes_GET_SIZE(pieces[i]);
        memcpy(at, PyBytes_AS_STRING(pieces[i]), (size_t)n);
        at += n;
        if (i < 4) {
            put_double(at, doubles[i]);
            at += 8;
        }
    }
    PyObject *edit = Py_BuildValue("(nN)", content_start, added);
    if (edit == NULL)
        return -1;
    int rc = PyList_Append(h->edits, edit);
    Py_DECREF(edit);
    if (rc < 0)
        return -1;

    /* `LlmCost._count_hot`, in place */
    uint64_t duration = end_ns > start_ns ? end_ns - start_ns : 0;
    double seconds = (double)duration / 1e9;
    Py_ssize_t bucket = 0;
    while (bucket < h->nbounds && h->bounds[bucket] < seconds)
        bucket++; /* bisect_left: the first bound >= seconds */
    if (add_float(series, 5, 1.0) < 0 || add_float(calls, 0, 1.0) < 0 ||
        add_float(cost, 0, total) < 0 || (n_in && add_float(in_cell, 0, (double)n_in) < 0) ||
        (n_out && add_float(out_cell, 0, (double)n_out) < 0) ||
        add_float(row, bucket, 1.0) < 0 || add_float(row, h->nbounds + 1, seconds) < 0)
        return -1;
#undef F
    return 1;
}

/* A span: appended to `spans` when it holds a trigger. 0 ok, -1 error. */
static int walk_span(const Matcher *m, const uint8_t *base, const uint8_t *p, const uint8_t *end,
                     Py_ssize_t resource, PyObject *spans, PyObject *memo, Hot *hot) {
    Matched matched;
    matched.count = matched.flags = matched.triggered = 0;
    const uint8_t *trace_id = NULL, *trace_id_end = NULL;
    uint64_t start_ns = 0, end_ns = 0;
    Py_ssize_t attributes = 0;
    Reader r = {p, end};
    Field f;
    int rc;
    while ((rc = next_field(&r, &f)) == 1) {
        switch (f.number) {
        case 1:
            if (f.wire == 2) {
                trace_id = f.data;
                trace_id_end = f.data_end;
            }
            break;
        case 7:
            if (f.wire == 1)
                start_ns = load_le64(f.data);
            break;
        case 8:
            if (f.wire == 1)
                end_ns = load_le64(f.data);
            break;
        case 9:
            if (f.wire == 2) {
                attributes++;
                if (match_attribute(m, f.data, f.data_end, &matched) < 0)
                    return -1;
            }
            break;
        default:
            break;
        }
    }
    if (rc < 0)
        return -1;
    if (!matched.triggered)
        return 0;
    PyObject *key = matched_key(&matched);
    if (key == NULL)
        return -1;
    Py_ssize_t trace_len = trace_id == NULL ? 0 : trace_id_end - trace_id;
    if (hot != NULL && hot->service != NULL && !matched.flags) {
        int done = hot_span(hot, &matched, key, p - base, trace_id == NULL ? p : trace_id,
                            trace_len, start_ns, end_ns, spans, resource, end - base);
        if (done != 0) {
            Py_DECREF(key);
            return done < 0 ? -1 : 0;
        }
    }
    if (hot != NULL && trace_id != NULL)
        touch(hot, trace_id, trace_len); /* handed back: it may change the trace's agent */
    /* a span whose reading the caller holds under its key needs neither its ids nor its
     * values (the common case: ~20 objects a span not made) */
    int known = 0;
    if (memo != NULL && !matched.flags) {
        known = PyDict_Contains(memo, key);
        if (known < 0) {
            Py_DECREF(key);
            return -1;
        }
    }
    PyObject *ids = known ? Py_NewRef(Py_None) : matched_tuple(&matched, 1);
    PyObject *values = ids == NULL ? NULL : known ? Py_NewRef(Py_None) : matched_tuple(&matched, 0);
    PyObject *counts = values ? matched_counts(&matched) : NULL;
    if (counts == NULL) {
        Py_XDECREF(ids);
        Py_XDECREF(values);
        Py_DECREF(key);
        return -1;
    }
    if (trace_id == NULL)
        trace_id = trace_id_end = p;
    /* built item by item: Py_BuildValue parses its format on every call (~2,000
     * instructions a span, as much as the walk of its attributes) */
    PyObject *item = PyTuple_New(12);
    if (item == NULL) {
        Py_DECREF(ids);
        Py_DECREF(values);
        Py_DECREF(key);
        Py_DECREF(counts);
        return -1;
    }
    PyTuple_SET_ITEM(item, 6, ids);
    PyTuple_SET_ITEM(item, 7, values);
    PyTuple_SET_ITEM(item, 10, key);
    PyTuple_SET_ITEM(item, 11, counts);
    PyObject *parts[8] = {
        PyLong_FromSsize_t(resource),
        PyLong_FromSsize_t((Py_ssize_t)(p - base)),
        PyLong_FromSsize_t((Py_ssize_t)(end - base)),
        PyBytes_FromStringAndSize((const char *)trace_id, trace_id_end - trace_id),
        PyLong_FromUnsignedLongLong((unsigned long long)start_ns),
        PyLong_FromUnsignedLongLong((unsigned long long)end_ns),
        PyLong_FromLong(matched.flags),
        PyLong_FromSsize_t(attributes),
    };
    static const int at[8] = {0, 1, 2, 3, 4, 5, 8, 9};
    int failed = 0;
    for (int i = 0; i < 8; i++) {
        if (parts[i] == NULL) {
            failed = 1;
            parts[i] = Py_NewRef(Py_None); /* the tuple must be whole to be freed */
        }
        PyTuple_SET_ITEM(item, at[i], parts[i]);
    }
    if (failed) {
        Py_DECREF(item);
        return -1;
    }
    rc = PyList_Append(spans, item);
    Py_DECREF(item);
    return rc;
}

/* The hot path's state from `walk`'s `hot` argument: (entries, resources, agents or None,
 * agent limit, generation, max tokens, bounds, edits). 0 ok, -1 error. */
static int hot_setup(Hot *h, PyObject *arg) {
    PyObject *agents, *bounds;
    if (!PyTuple_Check(arg) ||
        !PyArg_ParseTuple(arg, "O!O!OnLLO!O!", &PyDict_Type, &h->entries, &PyDict_Type,
                          &h->resources, &agents, &h->agent_limit, &h->generation,
                          &h->max_tokens,
                          &PyTuple_Type, &bounds, &PyList_Type, &h->edits)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "hot: a tuple");
        return -1;
    }
    if (agents != Py_None && !PyDict_Check(agents)) {
        PyErr_SetString(PyExc_TypeError, "hot: agents is a dict or None");
        return -1;
    }
    h->agents = agents == Py_None ? NULL : agents;
    h->nbounds = PyTuple_GET_SIZE(bounds);
    if (h->nbounds > MAX_BOUNDS) {
        PyErr_SetString(PyExc_ValueError, "hot: too many bounds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < h->nbounds; i++) {
        h->bounds[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (h->bounds[i] == -1.0 && PyErr_Occurred())
            return -1;
    }
    h->service = h->tenant = h->pair = NULL;
    memset(h->touched, 0, sizeof h->touched);
    return 0;
}

/* Whether a ResourceSpans entry's resource is whole before its first span: at most one
 * resource field, before every scope_spans (what encoders write). Else the parser merges
 * what comes later, and the hot path, which reads the resource first, stays off. */
static int resource_first(const uint8_t *p, const uint8_t *end) {
    Reader r = {p, end};
    Field f;
    int resources = 0, scopes = 0, rc;
    while ((rc = next_field(&r, &f)) == 1) {
        if (f.wire != 2)
            continue;
        if (f.number == 1) {
            if (resources++ || scopes)
                return 0;
        } else if (f.number == 2) {
            scopes++;
        }
    }
    return rc == 0;
}

/* The current resource's (service, tenant) from the hot resources, by its memo key. */
static int hot_resource(Hot *h, PyObject *key) {
    Py_CLEAR(h->service);
    Py_CLEAR(h->tenant);
    Py_CLEAR(h->pair);
    PyObject *got = PyDict_GetItemWithError(h->resources, key);
    if (got == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(got) || PyTuple_GET_SIZE(got) != 2) {
        PyErr_SetString(PyExc_TypeError, "hot: a resource is (service, tenant)");
        return -1;
    }
    h->service = Py_NewRef(PyTuple_GET_ITEM(got, 0));
    h->tenant = Py_NewRef(PyTuple_GET_ITEM(got, 1));
    h->pair = Py_NewRef(got);
    return 0;
}

static PyObject *walk(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *span_matcher, *resource_matcher, *memo = NULL, *hot_arg = NULL;
    PyTypeObject *matcher_type = *(PyTypeObject **)PyModule_GetState(module);
    if (!PyArg_ParseTuple(args, "y*O!O!|O!O", &view, matcher_type, &span_matcher, matcher_type,
                          &resource_matcher, &PyDict_Type, &memo, &hot_arg))
        return NULL;
    const Matcher *sm = (const Matcher *)span_matcher;
    const Matcher *rm = (const Matcher *)resource_matcher;
    const uint8_t *base = view.buf;
    Hot hot_state;
    Hot *hot = NULL;
    hot_state.service = hot_state.tenant = hot_state.pair = NULL;
    PyObject *resources = PyList_New(0);
    PyObject *spans = PyList_New(0);
    if (resources == NULL || spans == NULL)
        goto fail;
    if (hot_arg != NULL && hot_arg != Py_None) {
        if (hot_setup(&hot_state, hot_arg) < 0)
            goto fail;
        hot = &hot_state;
    }
    Reader top = {base, base + view.len};
    Field rf;
    int rc;
    while ((rc = next_field(&top, &rf)) == 1) {
        if (rf.number != 1 || rf.wire != 2)
            continue;
        /* ResourceSpans: resource = 1, scope_spans = 2. A resource given twice is merged
         * by the parser: its attributes are those of both, in order. */
        Py_ssize_t index = PyList_GET_SIZE(resources);
        Matched res;
        res.count = res.flags = res.triggered = 0;
        int hot_here = hot != NULL && resource_first(rf.data, rf.data_end);
        PyObject *res_key = NULL;
        if (hot != NULL) {
            Py_CLEAR(hot->service);
            Py_CLEAR(hot->tenant);
            Py_CLEAR(hot->pair);
        }
        if (hot_here) { /* no resource field: the key of no attributes */
            res_key = matched_key(&res);
            if (res_key == NULL || hot_resource(hot, res_key) < 0) {
                Py_XDECREF(res_key);
                goto fail;
            }
        }
        Reader rs = {rf.data, rf.data_end};
        Field sf;
        while ((rc = next_field(&rs, &sf)) == 1) {
            if (sf.wire != 2)
                continue;
            if (sf.number == 1) {
                Reader rr = {sf.data, sf.data_end};
                Field af;
                while ((rc = next_field(&rr, &af)) == 1) {
                    if (af.number == 1 && af.wire == 2 &&
                        match_attribute(rm, af.data, af.data_end, &res) < 0) {
                        Py_XDECREF(res_key);
                        goto fail;
                    }
                }
                if (rc < 0) {
                    Py_XDECREF(res_key);
                    goto fail;
                }
                if (hot_here) {
                    Py_XDECREF(res_key);
                    res_key = matched_key(&res);
                    if (res_key == NULL || hot_resource(hot, res_key) < 0) {
                        Py_XDECREF(res_key);
                        goto fail;
                    }
                }
            } else if (sf.number == 2) {
                Reader ss = {sf.data, sf.data_end};
                Field kf;
                while ((rc = next_field(&ss, &kf)) == 1) {
                    if (kf.number == 2 && kf.wire == 2 &&
                        walk_span(sm, base, kf.data, kf.data_end, index, spans, memo,
                                  hot) < 0) {
                        Py_XDECREF(res_key);
                        goto fail;
                    }
                }
                if (rc < 0) {
                    Py_XDECREF(res_key);
                    goto fail;
                }
            }
        }
        if (rc < 0) {
            Py_XDECREF(res_key);
            goto fail;
        }
        if (res_key == NULL && (res_key = matched_key(&res)) == NULL)
            goto fail;
        PyObject *ids = matched_tuple(&res, 1);
        PyObject *values = ids ? matched_tuple(&res, 0) : NULL;
        if (values == NULL) {
            Py_XDECREF(ids);
            Py_DECREF(res_key);
            goto fail;
        }
        PyObject *item = Py_BuildValue("(NNiN)", ids, values, res.flags, res_key);
        if (item == NULL || PyList_Append(resources, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    if (rc < 0)
        goto fail;
    PyBuffer_Release(&view);
    Py_XDECREF(hot_state.service);
    Py_XDECREF(hot_state.tenant);
    Py_XDECREF(hot_state.pair);
    return Py_BuildValue("(NN)", resources, spans);
fail:
    Py_XDECREF(resources);
    Py_XDECREF(spans);
    Py_XDECREF(hot_state.service);
    Py_XDECREF(hot_state.tenant);
    Py_XDECREF(hot_state.pair);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- red: span metrics of a request ------------------------------------------------ */

/* A request's spans are counted in a table of their own, in C, keyed by (resource index,
 * name, kind, status code): a request has a few dozen distinct keys for its ~100 spans,
 * so Python objects are made per key, not per span (a tuple key, a dict lookup and two
 * floats per span cost ~3,000 instructions, the walk itself ~800). Then each key's row is
 * added to the caller's series (a dict from (service value bytes, name bytes, kind, code)
 * to (histogram row, [volume])), in place; the keys it does not hold are handed back. */

typedef struct {
    Py_ssize_t resource;
    const uint8_t *name;
    Py_ssize_t name_len;
    int32_t kind;
    int32_t code;
    uint64_t hash;
} RedKey;

typedef struct {
    RedKey *keys;
    double *counts; /* `width` per key: the buckets, then the sum */
    Py_ssize_t *slots; /* open addressing: key index + 1, 0 empty */
    size_t mask;
    Py_ssize_t n;
    Py_ssize_t cap;
    Py_ssize_t width;
} RedTable;

static int red_grow(RedTable *t) {
    Py_ssize_t cap = t->cap ? t->cap * 2 : 32;
    RedKey *keys = PyMem_Realloc(t->keys, (size_t)cap * sizeof(RedKey));
    if (keys == NULL)
        return -1;
    t->keys = keys;
    double *counts = PyMem_Realloc(t->counts, (size_t)(cap * t->width) * sizeof(double));
    if (counts == NULL)
        return -1;
    t->counts = counts;
    size_t size = (size_t)cap * 2; /* at most half full */
    Py_ssize_t *slots = PyMem_Calloc(size, sizeof(Py_ssize_t));
    if (slots == NULL)
        return -1;
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    t->cap = cap;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        size_t j = (size_t)t->keys[i].hash & t->mask;
        while (t->slots[j] != 0)
            j = (j + 1) & t->mask;
        t->slots[j] = i + 1;
    }
    return 0;
}

/* The counts of the key, added when new; NULL when out of memory. */
static double *red_row(RedTable *t, const RedKey *key) {
    size_t j = (size_t)key->hash & t->mask;
    if (t->cap) {
        for (;;) {
            Py_ssize_t at = t->slots[j];
            if (at == 0)
                break;
            const RedKey *k = &t->keys[at - 1];
            if (k->hash == key->hash && k->resource == key->resource &&
                k->kind == key->kind && k->code == key->code &&
                k->name_len == key->name_len &&
                memcmp(k->name, key->name, (size_t)key->name_len) == 0)
                return &t->counts[(at - 1) * t->width];
            j = (j + 1) & t->mask;
        }
    }
    if (t->n == t->cap) {
        if (red_grow(t) < 0)
            return NULL;
        j = (size_t)key->hash & t->mask;
        while (t->slots[j] != 0)
            j = (j + 1) & t->mask;
    }
    t->keys[t->n] = *key;
    double *row = &t->counts[t->n * t->width];
    memset(row, 0, (size_t)t->width * sizeof(double));
    t->n++;
    t->slots[j] = t->n;
    return row;
}

/* One span's (name, kind, status code, duration) into the table. 0 ok, -1 error. */
static int red_span(const uint8_t *p, const uint8_t *end, Py_ssize_t resource, RedTable *t,
                    const double *bounds, Py_ssize_t nbounds) {
    RedKey key = {resource, p, 0, 0, 0, 0};
    uint64_t start_ns = 0, end_ns = 0;
    Reader r = {p, end};
    Field f = {0};
    int rc;
    while ((rc = next_field(&r, &f)) == 1) {
        if (f.number == 5 && f.wire == 2) {
            key.name = f.data;
            key.name_len = f.data_end - f.data;
        } else if (f.number == 6 && f.wire == 0) {
            key.kind = (int32_t)f.varint;
        } else if (f.number == 7 && f.wire == 1) {
            start_ns = load_le64(f.data);
        } else if (f.number == 8 && f.wire == 1) {
            end_ns = load_le64(f.data);
        } else if (f.number == 15 && f.wire == 2) {
            /* Status, merged if given twice: the last code given wins */
            Reader sr = {f.data, f.data_end};
            Field sf = {0};
            while ((rc = next_field(&sr, &sf)) == 1) {
                if (sf.number == 3 && sf.wire == 0)
                    key.code = (int32_t)sf.varint;
            }
            if (rc < 0)
                return -1;
        }
    }
    if (rc < 0)
        return -1;
    /* as Python's max(end - start, 0) / 1e9 (ints: unsigned fields, a signed difference) */
    double seconds = 0.0;
    if (end_ns > start_ns)
        seconds = (double)(end_ns - start_ns) / 1e9;
    Py_ssize_t bucket = 0;
    while (bucket < nbounds && bounds[bucket] < seconds)
        bucket++; /* bisect_left: the first bound >= seconds */
    key.hash = key_hash(key.name, key.name_len) ^ ((uint64_t)resource * 0x9E3779B97F4A7C15ULL) ^
               ((uint64_t)(uint32_t)key.kind << 40) ^ ((uint64_t)(uint32_t)key.code << 52);
    double *row = red_row(t, &key);
    if (row == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    row[bucket] += 1.0;
    row[nbounds + 1] += seconds;
    return 0;
}

/* list[i] += amount, as Python's `+=` on a float (or int) item. 0 ok, -1 error. */
static int add_float(PyObject *list, Py_ssize_t i, double amount) {
    double old = PyFloat_AsDouble(PyList_GET_ITEM(list, i));
    if (old == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *sum = PyFloat_FromDouble(old + amount);
    if (sum == NULL)
        return -1;
    PyList_SetItem(list, i, sum); /* steals `sum`, drops the old item */
    return 0;
}

/* The table's rows into `series`; the keys it lacks into `misses`. 0 ok, -1 error. */
static int red_flush(const RedTable *t, PyObject *services, PyObject *series,
                     PyObject *misses) {
    for (Py_ssize_t i = 0; i < t->n; i++) {
        const RedKey *k = &t->keys[i];
        const double *counts = &t->counts[i * t->width];
        PyObject *name = PyBytes_FromStringAndSize((const char *)k->name, k->name_len);
        PyObject *kind = name ? PyLong_FromLong(k->kind) : NULL;
        PyObject *code = kind ? PyLong_FromLong(k->code) : NULL;
        PyObject *key = code ? PyTuple_Pack(4, PyList_GET_ITEM(services, k->resource), name,
                                            kind, code)
                             : NULL;
        PyObject *found = key ? PyDict_GetItemWithError(series, key) : NULL;
        Py_XDECREF(key);
        if (found == NULL && PyErr_Occurred())
            goto fail;
        if (found != NULL) {
            PyObject *row, *volume;
            if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 2 ||
                !PyList_Check(row = PyTuple_GET_ITEM(found, 0)) ||
                PyList_GET_SIZE(row) != t->width ||
                !PyList_Check(volume = PyTuple_GET_ITEM(found, 1)) ||
                PyList_GET_SIZE(volume) != 1) {
                PyErr_SetString(PyExc_TypeError, "series values must be (row, [volume])");
                goto fail;
            }
            double spans = 0.0;
            for (Py_ssize_t b = 0; b < t->width; b++) {
                if (counts[b] != 0.0 && add_float(row, b, counts[b]) < 0)
                    goto fail;
                if (b < t->width - 1)
                    spans += counts[b];
            }
            if (add_float(volume, 0, spans) < 0)
                goto fail;
        } else {
            PyObject *row = PyList_New(t->width);
            if (row == NULL)
                goto fail;
            for (Py_ssize_t b = 0; b < t->width; b++) {
                PyObject *v = PyFloat_FromDouble(counts[b]);
                if (v == NULL) {
                    Py_DECREF(row);
                    goto fail;
                }
                PyList_SET_ITEM(row, b, v);
            }
            PyObject *miss = Py_BuildValue("(nOOON)", k->resource, name, kind, code, row);
            if (miss == NULL || PyList_Append(misses, miss) < 0) {
                Py_XDECREF(miss);
                goto fail;
            }
            Py_DECREF(miss);
        }
        Py_DECREF(name);
        Py_DECREF(kind);
        Py_DECREF(code);
        continue;
    fail:
        Py_XDECREF(name);
        Py_XDECREF(kind);
        Py_XDECREF(code);
        return -1;
    }
    return 0;
}

static PyObject *red(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *bounds_arg, *series;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O!O!", &view, &PyTuple_Type, &bounds_arg, &PyDict_Type,
                          &series))
        return NULL;
    Py_ssize_t nbounds = PyTuple_GET_SIZE(bounds_arg);
    RedTable table = {NULL, NULL, NULL, 0, 0, 0, nbounds + 2};
    double *bounds = PyMem_Malloc((size_t)(nbounds ? nbounds : 1) * sizeof(double));
    PyObject *services = PyList_New(0);
    PyObject *misses = PyList_New(0);
    if (bounds == NULL || services == NULL || misses == NULL) {
        if (bounds == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        bounds[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds_arg, i));
        if (bounds[i] == -1.0 && PyErr_Occurred())
            goto fail;
    }
    const uint8_t *base = view.buf;
    Reader top = {base, base + view.len};
    Field rf;
    int rc;
    while ((rc = next_field(&top, &rf)) == 1) {
        if (rf.number != 1 || rf.wire != 2)
            continue;
        Py_ssize_t index = PyList_GET_SIZE(services);
        const uint8_t *service = NULL, *service_end = NULL;
        Reader rs = {rf.data, rf.data_end};
        Field sf;
        while ((rc = next_field(&rs, &sf)) == 1) {
            if (sf.wire != 2)
                continue;
            if (sf.number == 1) {
                Reader rr = {sf.data, sf.data_end};
                Field af;
                while ((rc = next_field(&rr, &af)) == 1) {
                    if (af.number != 1 || af.wire != 2 || service != NULL)
                        continue;
                    /* the first attribute keyed service.name: its value's bytes */
                    Reader kv = {af.data, af.data_end};
                    Field kf;
                    const uint8_t *k = NULL, *k_end = NULL, *v = NULL, *v_end = NULL;
                    while ((rc = next_field(&kv, &kf)) == 1) {
                        if (kf.wire != 2)
                            continue;
                        if (kf.number == 1) {
                            k = kf.data;
                            k_end = kf.data_end;
                        } else if (kf.number == 2) {
                            v = kf.data;
                            v_end = kf.data_end;
                        }
                    }
                    if (rc < 0)
                        goto fail;
                    if (k != NULL && k_end - k == 12 && memcmp(k, "service.name", 12) == 0) {
                        service = v != NULL ? v : af.data_end;
                        service_end = v != NULL ? v_end : af.data_end;
                    }
                }
                if (rc < 0)
                    goto fail;
            } else if (sf.number == 2) {
                Reader ss = {sf.data, sf.data_end};
                Field kf;
                while ((rc = next_field(&ss, &kf)) == 1) {
                    if (kf.number == 2 && kf.wire == 2 &&
                        red_span(kf.data, kf.data_end, index, &table, bounds, nbounds) < 0)
                        goto fail;
                }
                if (rc < 0)
                    goto fail;
            }
        }
        if (rc < 0)
            goto fail;
        PyObject *item = service == NULL
                             ? Py_NewRef(Py_None)
                             : PyBytes_FromStringAndSize((const char *)service,
                                                         service_end - service);
        if (item == NULL || PyList_Append(services, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    if (rc < 0)
        goto fail;
    /* nothing is added to `series` unless the whole request was read */
    if (red_flush(&table, services, series, misses) < 0)
        goto fail;
    PyMem_Free(bounds);
    PyMem_Free(table.keys);
    PyMem_Free(table.counts);
    PyMem_Free(table.slots);
    PyBuffer_Release(&view);
    return Py_BuildValue("(NN)", services, misses);
fail:
    PyMem_Free(bounds);
    PyMem_Free(table.keys);
    PyMem_Free(table.counts);
    PyMem_Free(table.slots);
    Py_XDECREF(services);
    Py_XDECREF(misses);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- splice ----------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t at; /* span content start */
    const char *data;
    Py_ssize_t len;
} Edit;

typedef struct {
    const Edit *edits;
    Py_ssize_t count;
    Py_ssize_t next; /* the first edit not yet placed */
    char *out;       /* NULL: measuring */
    Py_ssize_t size;
    /* the new content size of each edited resource and scope entry, in the order the
     * walk meets them: recorded while measuring, read back while writing, so each level is
     * walked twice in all (measuring each entry again before writing it cost 8 walks) */
    Py_ssize_t *sizes;
    Py_ssize_t nsizes;
    Py_ssize_t cap;
    Py_ssize_t taken;
} Splice;

static void emit(Splice *s, const void *data, Py_ssize_t n) {
    if (s->out != NULL)
        memcpy(s->out + s->size, data, (size_t)n);
    s->size += n;
}

static void emit_varint(Splice *s, uint64_t v) {
    uint8_t buf[10];
    int n = 0;
    while (v >= 0x80) {
        buf[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[n++] = (uint8_t)v;
    emit(s, buf, n);
}

/* The bytes a message's content becomes, level 0 (request), 1 (ResourceSpans) or 2
 * (ScopeSpans), with the edits placed on the spans they name; returns its new size or -1.
 * Entries holding no edit are copied as they are. */
static Py_ssize_t splice_level(Splice *s, const uint8_t *base, const uint8_t *p,
                               const uint8_t *end, int level) {
    Py_ssize_t begin = s->size;
    uint32_t wanted = level == 0 ? 1 : 2;
    Reader r = {p, end};
    Field f;
    int rc;
    const uint8_t *copied = p; /* bytes before this are emitted */
    while (s->next < s->count && (rc = next_field(&r, &f)) == 1) {
        if (f.number != wanted || f.wire != 2)
            continue;
        Py_ssize_t content = f.data - base, content_end = f.data_end - base;
        const Edit *e = &s->edits[s->next];
        /* (a span of no bytes can start where its scope and resource end) */
        if (level == 2 ? e->at != content : e->at < content || e->at > content_end)
            continue;
        emit(s, copied, f.start - copied);
        emit_varint(s, (uint64_t)(wanted << 3 | 2));
        if (level == 2) {
            emit_varint(s, (uint64_t)(f.data_end - f.data) + (uint64_t)e->len);
            emit(s, f.data, f.data_end - f.data);
            emit(s, e->data, e->len);
            s->next++;
        } else if (s->out == NULL) {
            /* measuring: the entry's new size is known once its content is measured; the
             * length varint before it is counted at its real size from the record */
            if (s->nsizes == s->cap) {
                Py_ssize_t cap = s->cap ? s->cap * 2 : 16;
                Py_ssize_t *sizes = PyMem_Realloc(s->sizes, (size_t)cap * sizeof(Py_ssize_t));
                if (sizes == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                s->sizes = sizes;
                s->cap = cap;
            }
            Py_ssize_t slot = s->nsizes++;
            Py_ssize_t before = s->size;
            Py_ssize_t inner = splice_level(s, base, f.data, f.data_end, level + 1);
            if (inner < 0)
                return -1;
            s->sizes[slot] = inner;
            s->size = before;
            emit_varint(s, (uint64_t)inner);
            s->size += inner;
        } else {
            if (s->taken >= s->nsizes) {
                PyErr_SetString(PyExc_RuntimeError, "splice walked differently");
                return -1;
            }
            emit_varint(s, (uint64_t)s->sizes[s->taken++]);
            if (splice_level(s, base, f.data, f.data_end, level + 1) < 0)
                return -1;
        }
        copied = f.data_end;
    }
    if (PyErr_Occurred())
        return -1;
    emit(s, copied, end - copied);
    return s->size - begin;
}

static PyObject *splice(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *edits_arg;
    Splice s = {0};
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O", &view, &edits_arg))
        return NULL;
    PyObject *edits = PySequence_Fast(edits_arg, "edits must be a sequence");
    if (edits == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(edits);
    Edit *list = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Edit));
    if (list == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(edits, i);
        PyObject *data;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_Check(data = PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "an edit is (span start, bytes)");
            goto done;
        }
        list[i].at = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        if (list[i].at == -1 && PyErr_Occurred())
            goto done;
        if (i > 0 && list[i].at <= list[i - 1].at) {
            PyErr_SetString(PyExc_ValueError, "edits must be in ascending order");
            goto done;
        }
        list[i].data = PyBytes_AS_STRING(data);
        list[i].len = PyBytes_GET_SIZE(data);
    }
    const uint8_t *base = view.buf;
    s.edits = list;
    s.count = n;
    Py_ssize_t size = splice_level(&s, base, base, base + view.len, 0);
    if (size < 0)
        goto done;
    if (s.next != n) {
        PyErr_SetString(PyExc_ValueError, "an edit names no span");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    s.next = 0;
    s.size = 0;
    s.out = PyBytes_AS_STRING(result);
    if (splice_level(&s, base, base, base + view.len, 0) != size) {
        Py_CLEAR(result);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "splice changed size");
    }
done:
    PyMem_Free(s.sizes);
    PyMem_Free(list);
    Py_DECREF(edits);
    PyBuffer_Release(&view);
    return result;
}

/* ==== redaction (sidecar/processors/redact_scan.py, redact_wire.py) ================== */

/* ---- digit runs: the card rule's pre-scan form ------------------------------------ */

/* The bytes a card number's digit run may hold: the digits, space and '-'. */
static const uint8_t RUN_BYTE[256] = {
    [' '] = 1, ['-'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
};

static int append_ssize(PyObject *list, Py_ssize_t v) {
    PyObject *o = PyLong_FromSsize_t(v);
    if (o == NULL)
        return -1;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc;
}

/* The ends of the chains in the run bytes b[q:stop) (b[q - 1] and b[stop], where they
 * exist, are not run bytes), appended to `out`: 0, 1 when `out` would pass `limit`, -1 on
 * error. A chain is digits each one byte, or one separator, after the last; an end is the
 * offset after a digit that closes a chain of at least `digits` digits. */
static int chain_ends(const uint8_t *b, Py_ssize_t q, Py_ssize_t stop, Py_ssize_t digits,
                      Py_ssize_t limit, PyObject *out) {
    Py_ssize_t chain = 0; /* digits in the chain ending here */
    int sep = 0;          /* the last byte was a separator */
    for (; q < stop; q++) {
        if (b[q] >= '0') { /* a digit: ' ' and '-' sort below '0' */
            chain++;
            sep = 0;
            if (chain >= digits) {
                if (PyList_GET_SIZE(out) >= limit)
                    return 1;
                if (append_ssize(out, q + 1) < 0)
                    return -1;
            }
        } else {
            if (sep || chain == 0)
                chain = 0; /* two separators, or one before any digit: no chain */
            sep = 1;
        }
    }
    return 0;
}

/* The scalar scan. A match holds at least `digits` bytes, all run bytes: when byte p is
 * not one, no match starting in [p - digits + 1, p] exists, so the scan probes one byte
 * in `digits` (a 13-byte stride on text without digits) and reads the bytes around a
 * probe only when it is a run byte. */
static int digit_runs_scalar(const uint8_t *b, Py_ssize_t n, Py_ssize_t digits,
                             Py_ssize_t limit, PyObject *out) {
    /* no match starts before `lo`, and byte lo - 1 (if any) is not a run byte */
    Py_ssize_t lo = 0;
    Py_ssize_t p = digits - 1; /* the probe: the last byte of a shortest match from lo */
    while (p < n) {
        if (!RUN_BYTE[b[p]]) {
            lo = p + 1;
            p += digits;
            continue;
        }
        Py_ssize_t q = p;
        while (q > lo && RUN_BYTE[b[q - 1]])
            q--; /* the start of the run bytes holding p: b[q - 1] is not one */
        Py_ssize_t stop = p + 1;
        while (stop < n && RUN_BYTE[b[stop]])
            stop++; /* and its end */
        if (stop - q >= digits) { /* most runs (dates, ids) are too short to hold a match */
            int rc = chain_ends(b, q, stop, digits, limit, out);
            if (rc != 0)
                return rc;
        }
        lo = stop + 1; /* b[stop] is not a run byte (or stop == n) */
        p = lo + digits - 1;
    }
    return 0;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_SCAN 1

/* Bit i of *dig: b[i] is a digit; of *sep: a space or '-' (64 bytes from b). */
__attribute__((target("avx2"))) static inline void classify64(const uint8_t *b, uint64_t *dig,
                                                               uint64_t *sep) {
    const __m256i zero = _mm256_set1_epi8('0'), nine = _mm256_set1_epi8(9);
    const __m256i space = _mm256_set1_epi8(' '), dash = _mm256_set1_epi8('-');
    uint64_t d[2], s[2];
    for (int h = 0; h < 2; h++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(b + 32 * h));
        __m256i t = _mm256_sub_epi8(x, zero);
        __m256i isdig = _mm256_cmpeq_epi8(_mm256_min_epu8(t, nine), t); /* t <= 9 unsigned */
        __m256i issep = _mm256_or_si256(_mm256_cmpeq_epi8(x, space), _mm256_cmpeq_epi8(x, dash));
        d[h] = (uint32_t)_mm256_movemask_epi8(isdig);
        s[h] = (uint32_t)_mm256_movemask_epi8(issep);
    }
    *dig = d[0] | d[1] << 32;
    *sep = s[0] | s[1] << 32;
}

/* The AVX2 scan: the same ends as the scalar one. Text full of spaces or short numbers
 * defeats the stride (a probe lands on a run byte every few bytes); this classifies 64
 * bytes at a time instead. A match's bytes are digits and separators each between two
 * digits ("chain bytes"), at least `digits` of them in a row, the last a digit; so only
 * where `digits` chain bytes in a row end at a digit is the run of run bytes around it
 * read, by `chain_ends`, and the scan goes on after it. Bit i of a mask is byte at + i;
 * `carry[k]` holds the previous block's mask k, for the shifts across blocks. */
__attribute__((target("avx2"))) static int digit_runs_avx2(const uint8_t *b, Py_ssize_t n,
                                                            Py_ssize_t digits,
                                                            Py_ssize_t limit, PyObject *out) {
    uint8_t tail[65];
    uint64_t carry[8];
    int steps = 0;
    Py_ssize_t widths[8]; /* mask k + 1 = mask k & (mask k << widths[k]) */
    for (Py_ssize_t have = 1; have < digits; steps++) {
        widths[steps] = have < digits - have ? have : digits - have;
        have += widths[steps];
    }
    memset(carry, 0, sizeof carry);
    uint64_t prev_dig = 0; /* the previous block's digits */
    Py_ssize_t at = 0;
    while (at < n) {
        const uint8_t *block = b + at;
        Py_ssize_t len = n - at < 64 ? n - at : 64;
        if (len < 64) { /* the last bytes, padded with bytes that are not run bytes */
            memset(tail, 0, sizeof tail);
            memcpy(tail, block, (size_t)len);
            block = tail;
        }
        uint64_t dig, sep;
        classify64(block, &dig, &sep);
        int next_digit = at + 64 < n && (uint8_t)(b[at + 64] - '0') <= 9;
        uint64_t left = dig << 1 | prev_dig >> 63;                /* bit i: digit at i - 1 */
        uint64_t right = dig >> 1 | (uint64_t)next_digit << 63;   /* bit i: digit at i + 1 */
        uint64_t m = dig | (sep & left & right);
        uint64_t masks[9];
        masks[0] = m;
        for (int k = 0; k < steps; k++) {
            int w = (int)widths[k];
            uint64_t shifted = masks[k] << w | carry[k] >> (64 - w);
            masks[k + 1] = masks[k] & shifted;
            carry[k] = masks[k];
        }
        uint64_t ends = masks[steps] & dig;
        prev_dig = dig;
        if (ends == 0) {
            at += 64;
            continue;
        }
        /* the run bytes around the first: back to a byte that is not one (the scan went on
         * after one, or started at 0), forward to the next */
        Py_ssize_t p = at + __builtin_ctzll(ends);
        Py_ssize_t q = p;
        while (q > 0 && RUN_BYTE[b[q - 1]])
            q--;
        Py_ssize_t stop = p + 1;
        while (stop < n && RUN_BYTE[b[stop]])
            stop++;
        int rc = chain_ends(b, q, stop, digits, limit, out);
        if (rc != 0)
            return rc;
        /* b[stop] is not a run byte: no chain byte before stop + 1 reaches past it */
        at = stop + 1;
        memset(carry, 0, sizeof carry);
        prev_dig = 0;
    }
    return 0;
}
#endif

/* digit_runs(payload, digits, limit[, vector]): the end offset of every match of
 * \d(?:[ -]?\d){digits - 1}, ascending, each once (what Hyperscan reports for the
 * pattern); None when there are more than `limit`.
 *
 * A match ends at a digit, and read backwards from it the digits before it follow with at
 * most one separator between two: so offset e ends a match exactly when the chain of
 * digits ending at byte e - 1 holds at least `digits` digits. `vector` (default true)
 * takes the AVX2 scan where the CPU has it (for 2 <= digits <= 64), else the scalar one:
 * tests compare both. */
static PyObject *digit_runs(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t digits, limit;
    int vector = 1;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nn|p", &view, &digits, &limit, &vector))
        return NULL;
    if (digits < 1 || limit < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "digits must be positive, limit not negative");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc;
#ifdef HAVE_AVX2_SCAN
    if (vector && digits >= 2 && digits <= 64 && __builtin_cpu_supports("avx2"))
        rc = digit_runs_avx2(view.buf, view.len, digits, limit, out);
    else
#endif
        rc = digit_runs_scalar(view.buf, view.len, digits, limit, out);
    PyBuffer_Release(&view);
    if (rc < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (rc > 0) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* ---- the card pre-scan's confirm (redact_rules.CARD_PRESCAN) ----------------------- */

static int is_alnum_byte(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Whether CARD_PRESCAN matches somewhere in b[ws:we]:
 *   [^0-9A-Za-z_$-]\d(?:[ -]?\d){12} | \$\d(?:[ -]?\d){18}
 *   | \d(?:[ -]?\d){12}[^0-9A-Za-z_-] | \d(?:[ -]?\d){19}
 * Each arm's digits are consecutive digits of one chain (digits each one byte, or one
 * separator, after the last; maximal within the window). So, for a chain read left to
 * right, with t the index of a digit in it: the first arm matches when some digit t has
 * a byte before it (in the window) outside [0-9A-Za-z_$-] (a space between two digits
 * is one) and the chain holds 13 digits from t on; the second when the chain starts after
 * a `$` and holds 19; the third when digit t >= 12 has a byte after it outside
 * [0-9A-Za-z_-]; the fourth when the chain holds 20. Hand-written because calling RE2 per
 * window costs more than the scan that found them (property-tested against RE2). */
static int card_window(const uint8_t *b, Py_ssize_t ws, Py_ssize_t we) {
    Py_ssize_t count = 0, last = -3, first_open = -1;
    int dollar = 0;
    for (Py_ssize_t i = ws; i < we; i++) {
        uint8_t c = b[i];
        if (c < '0' || c > '9')
            continue;
        int joined = last == i - 1 ||
                     (last == i - 2 && (b[i - 1] == ' ' || b[i - 1] == '-'));
        if (!joined) {
            count = 0;
            first_open = -1;
            dollar = i > ws && b[i - 1] == '$';
        }
        if (first_open < 0 && i > ws) {
            uint8_t before = b[i - 1];
            if (!is_alnum_byte(before) && before != '_' && before != '$' && before != '-')
                first_open = count;
        }
        count++;
        last = i;
        if (count >= 20 || (dollar && count >= 19) ||
            (first_open >= 0 && count - first_open >= 13))
            return 1;
        if (count >= 13 && i + 1 < we) {
            uint8_t after = b[i + 1];
            if (!is_alnum_byte(after) && after != '_' && after != '-')
                return 1;
        }
    }
    return 0;
}

/* card_confirm(payload, ends, reach): the ends `to` for which CARD_PRESCAN matches in
 * payload[max(0, to - reach):to + 1], in order. */
static PyObject *card_confirm(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *ends;
    Py_ssize_t reach;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*On", &view, &ends, &reach))
        return NULL;
    PyObject *seq = PySequence_Fast(ends, "ends must be a sequence");
    PyObject *out = seq == NULL || reach < 0 ? NULL : PyList_New(0);
    if (seq != NULL && reach < 0)
        PyErr_SetString(PyExc_ValueError, "reach must not be negative");
    if (out == NULL)
        goto done;
    const uint8_t *b = view.buf;
    for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(seq); k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        Py_ssize_t to = PyLong_AsSsize_t(item);
        if (to == -1 && PyErr_Occurred())
            goto fail;
        if (to < 0) { /* a slice to a negative end counts from the end: not a window */
            PyErr_SetString(PyExc_ValueError, "an end must not be negative");
            goto fail;
        }
        Py_ssize_t ws = to - reach < 0 ? 0 : to - reach;
        Py_ssize_t we = to + 1 > view.len ? view.len : to + 1;
        if (ws < we && card_window(b, ws, we) && PyList_Append(out, item) < 0)
            goto fail;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return out;
}

/* ---- which items the pre-scan's hits lie in (redact.Redactor._hits) ---------------- */

/* The last k with starts[k] <= p, or -1; `starts` ascending. */
static Py_ssize_t last_start(const Py_ssize_t *starts, Py_ssize_t n, Py_ssize_t p) {
    Py_ssize_t lo = 0, hi = n; /* bisect_right */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (p < starts[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo - 1;
}

static int load_ssizes(PyObject *list, Py_ssize_t **out, Py_ssize_t *n) {
    PyObject *seq = PySequence_Fast(list, "expected a sequence of ints");
    if (seq == NULL)
        return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Malloc((size_t)(*n ? *n : 1) * sizeof(Py_ssize_t));
    if (*out == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        (*out)[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        if ((*out)[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* group_hits(offsets, starts, ends) -> (at, outside): for the matches (to, form) of a
 * pre-scan, the items [starts[k], ends[k]) (ascending, disjoint) holding byte to - 1 or
 * to - 2 (`redact_scan.locate`), as {k: [(to, form), ...]} in the order of `offsets`,
 * and whether a match lies in no item. One call, not a Python loop of bisects per hit. */
static PyObject *group_hits(PyObject *module, PyObject *args) {
    PyObject *offsets_arg, *starts_arg, *ends_arg;
    (void)module;
    if (!PyArg_ParseTuple(args, "OOO", &offsets_arg, &starts_arg, &ends_arg))
        return NULL;
    Py_ssize_t *starts = NULL, *ends = NULL, n = 0, n_ends = 0;
    PyObject *offsets = NULL, *at = NULL, *result = NULL;
    if (load_ssizes(starts_arg, &starts, &n) < 0 || load_ssizes(ends_arg, &ends, &n_ends) < 0)
        goto done;
    if (n != n_ends) {
        PyErr_SetString(PyExc_ValueError, "starts and ends differ in length");
        goto done;
    }
    offsets = PySequence_Fast(offsets_arg, "offsets must be a sequence");
    at = offsets == NULL ? NULL : PyDict_New();
    if (at == NULL)
        goto done;
    int outside = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(offsets); i++) {
        PyObject *hit = PySequence_Fast_GET_ITEM(offsets, i);
        if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2) {
            PyErr_SetString(PyExc_TypeError, "an offset is (to, form)");
            goto done;
        }
        Py_ssize_t to = PyLong_AsSsize_t(PyTuple_GET_ITEM(hit, 0));
        if (to == -1 && PyErr_Occurred())
            goto done;
        Py_ssize_t found[2];
        int m = 0;
        for (Py_ssize_t p = to - 1; p >= to - 2; p--) {
            Py_ssize_t k = last_start(starts, n, p);
            if (k >= 0 && p < ends[k] && (m == 0 || found[0] != k))
                found[m++] = k;
        }
        if (m == 0)
            outside = 1;
        for (int j = 0; j < m; j++) {
            PyObject *key = PyLong_FromSsize_t(found[j]);
            if (key == NULL)
                goto done;
            PyObject *list = PyDict_GetItemWithError(at, key); /* borrowed */
            if (list == NULL) {
                if (PyErr_Occurred() || (list = PyList_New(0)) == NULL ||
                    PyDict_SetItem(at, key, list) < 0) {
                    Py_XDECREF(list);
                    Py_DECREF(key);
                    goto done;
                }
                Py_DECREF(list); /* the dict holds it */
            }
            Py_DECREF(key);
            if (PyList_Append(list, hit) < 0)
                goto done;
        }
    }
    result = Py_BuildValue("(OO)", at, outside ? Py_True : Py_False);
done:
    PyMem_Free(starts);
    PyMem_Free(ends);
    Py_XDECREF(offsets);
    Py_XDECREF(at);
    return result;
}

/* ---- where a request's items lie (redact_wire.layout) ----------------------------- */


/* redact_layout(payload) -> (resources, scopes, starts, ends, heads): resource entries
 * are field 1 of every Export*ServiceRequest, scope entries field 2 of a resource entry,
 * items field 2 of a scope entry, for all three signals; other fields and other wire types
 * are stepped over, and nothing inside an item, resource or scope message is read.
 * resources: (head, start, end) of each resource entry; scopes: (head, start, end,
 * resource index, index in its resource, index of its first item) of each scope entry;
 * starts, ends, heads: of each item, in wire order (head: its tag's first byte). */
static PyObject *redact_layout(PyObject *module, PyObject *args) {
    Py_buffer view;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*", &view))
        return NULL;
    const uint8_t *base = view.buf;
    PyObject *resources = PyList_New(0), *scopes = PyList_New(0), *starts = PyList_New(0),
             *ends = PyList_New(0), *heads = PyList_New(0);
    if (resources == NULL || scopes == NULL || starts == NULL || ends == NULL ||
        heads == NULL)
        goto fail;
    Reader top = {base, base + view.len};
    Field rf;
    int rc;
    Py_ssize_t r = 0;
    while ((rc = next_field(&top, &rf)) == 1) {
        if (rf.number != 1 || rf.wire != 2)
            continue;
        PyObject *entry = Py_BuildValue("(nnn)", (Py_ssize_t)(rf.start - base),
                                        (Py_ssize_t)(rf.data - base),
                                        (Py_ssize_t)(rf.data_end - base));
        if (entry == NULL || PyList_Append(resources, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
        Reader rs = {rf.data, rf.data_end};
        Field sf;
        Py_ssize_t s = 0;
        while ((rc = next_field(&rs, &sf)) == 1) {
            if (sf.number != 2 || sf.wire != 2)
                continue;
            entry = Py_BuildValue("(nnnnnn)", (Py_ssize_t)(sf.start - base),
                                  (Py_ssize_t)(sf.data - base),
                                  (Py_ssize_t)(sf.data_end - base), r, s,
                                  PyList_GET_SIZE(starts));
            if (entry == NULL || PyList_Append(scopes, entry) < 0) {
                Py_XDECREF(entry);
                goto fail;
            }
            Py_DECREF(entry);
            Reader ss = {sf.data, sf.data_end};
            Field kf;
            while ((rc = next_field(&ss, &kf)) == 1) {
                if (kf.number != 2 || kf.wire != 2)
                    continue;
                if (append_ssize(starts, kf.data - base) < 0 ||
                    append_ssize(ends, kf.data_end - base) < 0 ||
                    append_ssize(heads, kf.start - base) < 0)
                    goto fail;
            }
            if (rc < 0)
                goto fail;
            s++;
        }
        if (rc < 0)
            goto fail;
        r++;
    }
    if (rc < 0)
        goto fail;
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNNNN)", resources, scopes, starts, ends, heads);
fail:
    Py_XDECREF(resources);
    Py_XDECREF(scopes);
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_XDECREF(heads);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- the fields of one item that hold the pre-scan's hits -------------------------- */

#define MAX_POINTS 4096 /* points placed per call (more: the caller walks the item whole) */

typedef struct {
    Py_ssize_t pos;
    Py_ssize_t index; /* in the caller's sequence */
} Point;

static int point_order(const void *a, const void *b) {
    Py_ssize_t x = ((const Point *)a)->pos, y = ((const Point *)b)->pos;
    return (x > y) - (x < y);
}

/* hit_fields(payload, start, end, number, until, points) -> (fields, which) | None: the
 * fields of the message payload[start:end] are read in order while a field starts at or
 * before `until` (the rest is not read: what redact_wire.fields reads). A point p in
 * [start, end) is placed in the length-delimited field whose bytes (tag, length and
 * content) hold it; None when one lies in any other field, in a field of another number,
 * or past `until`, or there are more than MAX_POINTS points. fields: (head, content start,
 * content end, ordinal among the length-delimited fields numbered `number`) of each field
 * holding a point, in wire order; which: per point, the index of its field in `fields`, or
 * -1 for a point outside [start, end). */
static PyObject *hit_fields(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end, until;
    unsigned int number;
    PyObject *points_arg;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nnInO", &view, &start, &end, &number, &until, &points_arg))
        return NULL;
    PyObject *points = NULL, *fields = NULL, *which = NULL, *result = NULL;
    Point *sorted = NULL;
    Py_ssize_t *slot = NULL;
    if (start < 0 || start > end || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "the item lies outside the payload");
        goto done;
    }
    points = PySequence_Fast(points_arg, "points must be a sequence");
    if (points == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(points);
    if (n > MAX_POINTS) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    sorted = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Point));
    slot = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_ssize_t));
    if (sorted == NULL || slot == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t m = 0; /* points in [start, end), into `sorted` */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t p = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(points, i));
        if (p == -1 && PyErr_Occurred())
            goto done;
        slot[i] = -1;
        if (start <= p && p < end) {
            sorted[m].pos = p;
            sorted[m].index = i;
            m++;
        }
    }
    qsort(sorted, (size_t)m, sizeof(Point), point_order);
    fields = PyList_New(0);
    if (fields == NULL)
        goto done;
    const uint8_t *base = view.buf;
    Reader r = {base + start, base + end};
    Field f;
    int rc = 0;
    Py_ssize_t ordinal = 0, next = 0; /* the first point not yet placed */
    int elsewhere = 0; /* a point in a field of another number or wire type */
    while (r.p - base <= until && (rc = next_field(&r, &f)) == 1) {
        /* fields tile the message: the points before this one's end are in it */
        Py_ssize_t head = f.start - base, stop = r.p - base;
        int mine = f.wire == 2 && f.number == number;
        if (next < m && sorted[next].pos < stop && !mine) {
            elsewhere = 1; /* read on all the same: malformed bytes before `until` raise */
            while (next < m && sorted[next].pos < stop)
                next++;
        } else if (next < m && sorted[next].pos < stop) {
            PyObject *entry = Py_BuildValue("(nnnn)", head, (Py_ssize_t)(f.data - base),
                                            stop, ordinal);
            if (entry == NULL || PyList_Append(fields, entry) < 0) {
                Py_XDECREF(entry);
                goto done;
            }
            Py_DECREF(entry);
            Py_ssize_t index = PyList_GET_SIZE(fields) - 1;
            while (next < m && sorted[next].pos < stop)
                slot[sorted[next++].index] = index;
        }
        if (mine)
            ordinal++;
    }
    if (rc < 0)
        goto done;
    if (elsewhere || next < m) { /* or a point past `until`, which is not read */
        result = Py_NewRef(Py_None);
        goto done;
    }
    which = PyList_New(n);
    if (which == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyLong_FromSsize_t(slot[i]);
        if (o == NULL)
            goto done;
        PyList_SET_ITEM(which, i, o);
    }
    result = Py_BuildValue("(OO)", fields, which);
done:
    PyMem_Free(sorted);
    PyMem_Free(slot);
    Py_XDECREF(points);
    Py_XDECREF(fields);
    Py_XDECREF(which);
    PyBuffer_Release(&view);
    return result;
}

/* ---- putting re-encoded items back (redact_wire.splice) --------------------------- */

typedef struct {
    Py_ssize_t at;  /* the item's content start */
    const char *data;
    Py_ssize_t len; /* its new content */
} Replace;

typedef struct {
    const Replace *edits;
    Py_ssize_t count;
    Py_ssize_t next; /* the first edit not yet placed */
    char *out;       /* NULL: measuring */
    Py_ssize_t size;
} Replacing;

static void rp_emit(Replacing *s, const void *data, Py_ssize_t n) {
    if (s->out != NULL && n > 0)
        memcpy(s->out + s->size, data, (size_t)n);
    s->size += n;
}

static void rp_varint(Replacing *s, uint64_t v) {
    uint8_t buf[10];
    int n = 0;
    while (v >= 0x80) {
        buf[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[n++] = (uint8_t)v;
    rp_emit(s, buf, n);
}

/* The tag bytes of the field at `start`, as they are (whatever their encoding). */
static Py_ssize_t tag_size(const Field *f) {
    const uint8_t *p = f->start;
    while (*p >= 0x80)
        p++; /* next_field read this varint: it ends before the content */
    return p + 1 - f->start;
}

/* The content of a message at level 0 (request), 1 (resource entry) or 2 (scope entry),
 * with the items the edits name (field 2 of a scope entry, by content start) given their
 * new content, and the lengths of the entries holding them rewritten; its size, or -1. */
static Py_ssize_t rp_level(Replacing *s, const uint8_t *base, const uint8_t *p,
                           const uint8_t *end, int level) {
    Py_ssize_t begin = s->size;
    uint32_t wanted = level == 0 ? 1 : 2;
    Reader r = {p, end};
    Field f;
    int rc = 0;
    const uint8_t *copied = p; /* bytes before this are emitted */
    while (s->next < s->count && (rc = next_field(&r, &f)) == 1) {
        if (f.wire != 2)
            continue;
        Py_ssize_t content = f.data - base, content_end = f.data_end - base;
        const Replace *e = &s->edits[s->next];
        /* field 1 of an entry (its resource or scope): no item's content starts where its
         * content does (an item's lies past the tag of a field 2 of the entry) */
        if (level >= 1 && f.number == 1 && e->at == content) {
            rp_emit(s, copied, f.start - copied);
            rp_emit(s, f.start, tag_size(&f));
            rp_varint(s, (uint64_t)e->len);
            rp_emit(s, e->data, e->len);
            s->next++;
            copied = f.data_end;
            continue;
        }
        if (f.number != wanted)
            continue;
        /* an item of no bytes can start where its scope and resource entries end */
        if (level == 2 ? e->at != content : e->at < content || e->at > content_end)
            continue;
        rp_emit(s, copied, f.start - copied);
        rp_emit(s, f.start, tag_size(&f));
        if (level == 2) {
            rp_varint(s, (uint64_t)e->len);
            rp_emit(s, e->data, e->len);
            s->next++;
        } else {
            Replacing probe = *s;
            probe.out = NULL;
            probe.size = 0;
            Py_ssize_t inner = rp_level(&probe, base, f.data, f.data_end, level + 1);
            if (inner < 0)
                return -1;
            rp_varint(s, (uint64_t)inner);
            if (rp_level(s, base, f.data, f.data_end, level + 1) < 0)
                return -1;
        }
        copied = f.data_end;
    }
    if (rc < 0)
        return -1;
    rp_emit(s, copied, end - copied);
    return s->size - begin;
}

/* redact_splice(payload, edits) -> bytes: edits (item content start, new content),
 * ascending, each replacing the content of the item (field 2 of a scope entry, field 2 of
 * a resource entry, field 1 of the request) starting there, or of field 1 of a resource
 * or scope entry (its resource or scope) starting there; the tags of the item and of
 * the entries around it are kept as they are, their lengths rewritten; every other byte
 * is copied as it is. ValueError when an edit names no item. */
static PyObject *redact_splice(PyObject *module, PyObject *args) {
    Py_buffer view;
    PyObject *edits_arg;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O", &view, &edits_arg))
        return NULL;
    PyObject *edits = PySequence_Fast(edits_arg, "edits must be a sequence");
    if (edits == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(edits);
    Replace *list = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Replace));
    if (list == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(edits, i);
        PyObject *data;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_Check(data = PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "an edit is (item start, bytes)");
            goto done;
        }
        list[i].at = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        if (list[i].at == -1 && PyErr_Occurred())
            goto done;
        if (i > 0 && list[i].at <= list[i - 1].at) {
            PyErr_SetString(PyExc_ValueError, "edits must be in ascending order");
            goto done;
        }
        list[i].data = PyBytes_AS_STRING(data);
        list[i].len = PyBytes_GET_SIZE(data);
    }
    const uint8_t *base = view.buf;
    Replacing s = {list, n, 0, NULL, 0};
    Py_ssize_t size = rp_level(&s, base, base, base + view.len, 0);
    if (size < 0)
        goto done;
    if (s.next != n) {
        PyErr_SetString(PyExc_ValueError, "an edit names no item");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    s.next = 0;
    s.size = 0;
    s.out = PyBytes_AS_STRING(result);
    if (rp_level(&s, base, base, base + view.len, 0) != size) {
        Py_CLEAR(result);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "splice changed size");
    }
done:
    PyMem_Free(list);
    Py_DECREF(edits);
    PyBuffer_Release(&view);
    return result;
}

/* first_fields(payload, start, end) -> [(content start, content end), ...]: the
 * length-delimited fields numbered 1 of the message payload[start:end] (a resource entry's
 * `resource`, a scope entry's `scope`), in wire order; ValueError on bytes `redact_layout`
 * refuses. In C: a scope entry holds every item's tag, which a Python loop would read one
 * by one. */
static PyObject *first_fields(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end))
        return NULL;
    PyObject *out = NULL;
    if (start < 0 || start > end || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "the message lies outside the payload");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    const uint8_t *base = view.buf;
    Reader r = {base + start, base + end};
    Field f;
    int rc;
    while ((rc = next_field(&r, &f)) == 1) {
        if (f.number != 1 || f.wire != 2)
            continue;
        PyObject *entry = Py_BuildValue("(nn)", (Py_ssize_t)(f.data - base),
                                        (Py_ssize_t)(f.data_end - base));
        if (entry == NULL || PyList_Append(out, entry) < 0) {
            Py_XDECREF(entry);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(entry);
    }
    if (rc < 0)
        Py_CLEAR(out);
done:
    PyBuffer_Release(&view);
    return out;
}

/* ---- an attribute holding a string (redact.py, the hit attribute's direct path) ---- */

/* kv_string(payload, start, end) -> (key start, key end, string start, string end) | None:
 * when the KeyValue payload[start:end] is exactly a non-empty key (field 1) and then a
 * value (field 2) that is exactly one string_value (field 1 of AnyValue), each given once:
 * the KeyValue the parser reads from it re-serialises as those two fields in that order,
 * so editing the string in the bytes is what editing it in the message and serialising
 * gives. None for any other shape (an empty key, which the serialiser leaves out; other
 * fields; a field given twice; other wire types); ValueError on malformed bytes. */
static PyObject *kv_string(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end))
        return NULL;
    PyObject *result = NULL;
    if (start < 0 || start > end || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "the attribute lies outside the payload");
        goto done;
    }
    const uint8_t *base = view.buf;
    Reader r = {base + start, base + end};
    Field key, value, text;
    int rc = next_field(&r, &key);
    if (rc < 0)
        goto done;
    if (rc == 0 || key.number != 1 || key.wire != 2 || key.data == key.data_end)
        goto none;
    rc = next_field(&r, &value);
    if (rc < 0)
        goto done;
    if (rc == 0 || value.number != 2 || value.wire != 2 || r.p != r.end)
        goto none;
    Reader v = {value.data, value.data_end};
    rc = next_field(&v, &text);
    if (rc < 0)
        goto done;
    if (rc == 0 || text.number != 1 || text.wire != 2 || v.p != v.end)
        goto none;
    result = Py_BuildValue("(nnnn)", (Py_ssize_t)(key.data - base),
                           (Py_ssize_t)(key.data_end - base), (Py_ssize_t)(text.data - base),
                           (Py_ssize_t)(text.data_end - base));
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

/* kv_encode(key, text) -> bytes: KeyValue(key, AnyValue(string_value=text)) as the protobuf
 * serialiser writes it (key field, then value field holding the string field; shortest
 * varints), for a non-empty key (kv_string's shape). */
static int put_varint(uint8_t *at, uint64_t v) {
    int n = 0;
    while (v >= 0x80) {
        at[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    at[n++] = (uint8_t)v;
    return n;
}

static int varint_size(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static PyObject *kv_encode(PyObject *module, PyObject *args) {
    Py_buffer key, text;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &text))
        return NULL;
    PyObject *out = NULL;
    if (key.len == 0) {
        PyErr_SetString(PyExc_ValueError, "an empty key is not serialised");
        goto done;
    }
    uint64_t value = 1 + (uint64_t)varint_size((uint64_t)text.len) + (uint64_t)text.len;
    Py_ssize_t size = 1 + varint_size((uint64_t)key.len) + key.len + 1 +
                      varint_size(value) + (Py_ssize_t)value;
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        goto done;
    uint8_t *at = (uint8_t *)PyBytes_AS_STRING(out);
    *at++ = 0x0A;
    at += put_varint(at, (uint64_t)key.len);
    memcpy(at, key.buf, (size_t)key.len);
    at += key.len;
    *at++ = 0x12;
    at += put_varint(at, value);
    *at++ = 0x0A;
    at += put_varint(at, (uint64_t)text.len);
    if (text.len > 0)
        memcpy(at, text.buf, (size_t)text.len);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&text);
    return out;
}

/* ---- module ----------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(payload, span_keys, resource_keys, memo=None, hot=None) -> (resources, spans)\n\n"
     "resources: per ResourceSpans entry, (ids, values, flags, memo key) of its matched\n"
     "attributes.\n"
     "spans: per span holding a trigger, in wire order, (resource index, content start,\n"
     "content end, trace_id, start_time_unix_nano, end_time_unix_nano, ids, values, flags,\n"
     "attribute count, memo key, count values); ids and values are None for a span with\n"
     "no flags whose memo key is in `memo` (a dict). hot: (entries, resources, agents,\n"
     "agent limit, generation, max tokens, bounds, edits), the cost processor's hot path (see\n"
     "hot_span); the calls it prices are not reported, their edits go to `edits`, and\n"
     "a REMEMBER record (values: the agent) stands where one may change a trace's agent."},
    {"schema", schema, METH_O,
     "schema(messages) -> capsule: a request's schema for `check` (sidecar/wirecheck.py)."},
    {"check", check, METH_VARARGS,
     "check(payload, schema) -> int: the request's items when the protobuf parser surely\n"
     "takes it, else -1 (not sure: parse it)."},
    {"red", red, METH_VARARGS,
     "red(payload, bounds, series) -> (services, misses): per ResourceSpans entry the\n"
     "serialized value of its first service.name attribute (None: none). The spans'\n"
     "durations in seconds, per (resource index, span name bytes, kind, status code), as a\n"
     "histogram row over `bounds` (bisect_left buckets, one past the last bound, then the\n"
     "sum), are added to series[(service value, name, kind, code)] = (row, [volume]) in\n"
     "place (volume: the spans); the keys `series` lacks come back as misses, (resource\n"
     "index, name, kind, code, row). Nothing is added when the bytes raise ValueError."},
    {"splice", splice, METH_VARARGS,
     "splice(payload, edits) -> bytes: edits (span content start, bytes), ascending, each\n"
     "appended to the span starting there, with the enclosing lengths rewritten."},
    {"digit_runs", digit_runs, METH_VARARGS,
     "digit_runs(payload, digits, limit[, vector]) -> list[int] | None: the end offset of\n"
     "every match of \\d(?:[ -]?\\d){digits - 1}, ascending; None when there are more than `limit`."},
    {"card_confirm", card_confirm, METH_VARARGS,
     "card_confirm(payload, ends, reach) -> list[int]: the ends `to` for which the card\n"
     "rule's pre-scan form matches in payload[max(0, to - reach):to + 1]."},
    {"group_hits", group_hits, METH_VARARGS,
     "group_hits(offsets, starts, ends) -> (at, outside): the items each pre-scan match\n"
     "(to, form) lies in, {item: [(to, form), ...]}, and whether one lies in none."},
    {"redact_layout", redact_layout, METH_VARARGS,
     "redact_layout(payload) -> (resources, scopes, starts, ends, heads): where the items of\n"
     "an OTLP request lie (resource entries, their scope entries, the scopes' items)."},
    {"hit_fields", hit_fields, METH_VARARGS,
     "hit_fields(payload, start, end, number, until, points) -> (fields, which) | None: the\n"
     "length-delimited fields numbered `number` of payload[start:end] holding the points."},
    {"first_fields", first_fields, METH_VARARGS,
     "first_fields(payload, start, end) -> list[(start, end)]: the contents of the\n"
     "length-delimited fields numbered 1 of the message payload[start:end]."},
    {"redact_splice", redact_splice, METH_VARARGS,
     "redact_splice(payload, edits) -> bytes: edits (item content start, new content),\n"
     "ascending, each replacing an item's content, the enclosing lengths rewritten."},
    {"kv_string", kv_string, METH_VARARGS,
     "kv_string(payload, start, end) -> (key start, key end, string start, string end) |\n"
     "None: the KeyValue payload[start:end] when it is exactly a key and a string value."},
    {"kv_encode", kv_encode, METH_VARARGS,
     "kv_encode(key, text) -> bytes: KeyValue(key, AnyValue(string_value=text)) serialised."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &matcher_spec, NULL);
    if (type == NULL)
        return -1;
    *(PyTypeObject **)PyModule_GetState(module) = (PyTypeObject *)type;
    if (PyModule_AddObjectRef(module, "Matcher", type) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "DUPLICATE", FLAG_DUPLICATE) < 0 ||
        PyModule_AddIntConstant(module, "ODD", FLAG_ODD) < 0 ||
        PyModule_AddIntConstant(module, "MANY", FLAG_MANY) < 0 ||
        PyModule_AddIntConstant(module, "REMEMBER", FLAG_REMEMBER) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    PyTypeObject **state = PyModule_GetState(module);
    if (state != NULL)
        Py_VISIT(*state);
    return 0;
}

static int module_clear(PyObject *module) {
    PyTypeObject **state = PyModule_GetState(module);
    if (state != NULL)
        Py_CLEAR(*state);
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "sidecar._spanwalk",
    "Span and attribute offsets of OTLP trace requests, and splicing (see the source).",
    sizeof(PyTypeObject *), methods, module_slots, module_traverse, module_clear, NULL,
};

PyMODINIT_FUNC PyInit__spanwalk(void) { return PyModuleDef_Init(&module_def); }
