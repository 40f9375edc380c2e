/* tickvault._indicators: compiled twins of the indicators whose Python cost was all interpreter.
 *
 * Used only through tickvault.indicators (incremental.py, bundle.py, vectorized.py): the
 * definitions, the argument checks, the fallbacks and the tests live there. Each piece does,
 * operation for operation, what its Python twin does, so the results are the same bits:
 *
 *   SMA(period, recompute_every)  incremental.PySMA: a ring of `period` doubles, a running sum,
 *                                 math.fsum of the ring every `recompute_every` values;
 *   EMA(period)                   incremental.PyEMA: SMA seed, then value += k * (close - value);
 *   RSI(period)                   incremental.PyRSI: Wilder averages in TA-Lib's operation order;
 *   ATR(period)                   incremental.PyATR: true range, mean seed, Wilder smoothing;
 *   MACD(fast, slow, signal)      incremental.PyMACD: a warm-up ring of `slow` closes, both EMAs
 *                                 seeded at bar slow - 1, the signal seeded from the line's mean;
 *   BollingerBands(period, dev_up, dev_dn, recompute_every, drift_limit)
 *                                 incremental.PyBollingerBands: sums about a reference, recomputed
 *                                 with math.fsum on drift and every `recompute_every` updates;
 *   VWAP()                        incremental.PyVWAP: two running sums;
 *   IndicatorSet(rsi, ema_fast, ema_slow, sma, macd, bands, atr, vwap)
 *                                 bundle.PyIndicatorSet.update: one call steps the eight compiled
 *                                 members above in the same order (one Python->C transition a bar);
 *   atr_into(high, low, close, period, out)
 *                                 vectorized.atr's values after the warm-up, in one pass: TA-Lib's
 *                                 true range, the seed (mean of the first `period` true ranges),
 *                                 then y = decay * y + gain * tr as the numpy path defines it;
 *   macd_into(close, fast, slow, signal, line, signal_out, hist)
 *                                 vectorized.macd's three outputs after the warm-up, in one pass.
 *   (The numpy paths group the sums differently: the array forms agree with them to a few ulps,
 *   not to the bit.)
 *
 * Why C: measured on 2 shared cores, a Python update's floor is ~60 ns of loop and call plus
 * ~15-20 ns per float operation (each allocates a float) and per attribute write; SMA and VWAP
 * could not get below ~180 ns that way (talipp: ~800), the bundle of eight cost ~1.9 us a bar.
 * ATR's numpy form needs ~7 passes over the data plus the BLAS recurrence (~3.8 ns/value at best
 * against TA-Lib's 1.3), MACD's three BLAS recurrences ~11 ns/value against TA-Lib's 2.4.
 *
 * Exactness: built with -ffp-contract=off (setup.py) so no a * b + c is fused into one rounding
 * where Python rounds twice; every expression keeps the Python twin's grouping (a * b / c is
 * (a * b) / c, an int period is converted to double first, as Python's float / int does); exact
 * sums call math.fsum itself, so its errors (inf - inf, overflow) are raised at the same update
 * with the same state left behind. What it must never do: read or write outside a buffer (every
 * length is checked), keep a reference to a caller's array, or release the GIL while touching
 * Python objects. Memory: SMA and BollingerBands hold their ring (8 bytes x period), MACD its
 * warm-up ring (8 bytes x slow); nothing else outlives a call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

#define FORMAT_VERSION 3 /* 2: macd_into; 3: EMA, RSI, ATR, MACD, BollingerBands, IndicatorSet */

static PyObject *math_fsum; /* math.fsum: the exact recomputes, the same function the Python twins call */

static int as_double(PyObject *obj, double *out) {
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    double value = PyFloat_AsDouble(obj);
    if (value == -1.0 && PyErr_Occurred()) return -1;
    *out = value;
    return 0;
}

/* Vectorcall arguments by position or keyword into out[0..total): `names` in order, the first
 * `required` of them required, the rest NULL when not given. Python's own messages. */
static int parse_args(const char *function, const char *const *names, Py_ssize_t required,
                      Py_ssize_t total, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      PyObject **out) {
    if (nargs > total) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd positional arguments (%zd given)",
                     function, total, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < total; i++) out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, j);
        Py_ssize_t i = 0;
        while (i < total && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) i++;
        if (i == total) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", function, key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", function, names[i]);
            return -1;
        }
        out[i] = args[nargs + j];
    }
    for (Py_ssize_t i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", function, names[i]);
            return -1;
        }
    }
    return 0;
}

/* math.fsum([x - offset for x in values]) (or of the values themselves when !subtract): exactly
 * what the Python twins compute, errors (inf - inf, overflow) included. */
static int fsum_of(const double *values, Py_ssize_t n, int subtract, double offset, double *out) {
    PyObject *list = PyList_New(n);
    if (list == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyFloat_FromDouble(subtract ? values[i] - offset : values[i]);
        if (item == NULL) {
            Py_DECREF(list);
            return -1;
        }
        PyList_SET_ITEM(list, i, item);
    }
    PyObject *total = PyObject_CallOneArg(math_fsum, list);
    Py_DECREF(list);
    if (total == NULL) return -1;
    *out = PyFloat_AsDouble(total);
    Py_DECREF(total);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* *buffer becomes a new buffer of n doubles (a second __init__ frees the first); -1 with
 * MemoryError, *buffer untouched. */
static int new_buffer(double **buffer, Py_ssize_t n) {
    if (n > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_NoMemory();
        return -1;
    }
    double *fresh = PyMem_Malloc((size_t)n * sizeof(double));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(*buffer);
    *buffer = fresh;
    return 0;
}

static int not_initialised(const void *ring, const char *name) {
    if (ring != NULL) return 0;
    PyErr_Format(PyExc_RuntimeError, "%s.__init__ was not called", name);
    return -1;
}

/* TA-Lib's TRANGE for one bar, as definitions.true_range (defined for high < low too). */
static inline double true_range(double high, double low, double prev_close) {
    double greatest = high - low;
    double up = fabs(prev_close - high);
    if (up > greatest) greatest = up;
    double down = fabs(prev_close - low);
    if (down > greatest) greatest = down;
    return greatest;
}

/* A read-only attribute `field` of Name##Object. */
#define MEMBER(Name, kind, field, doc) {#field, kind, offsetof(Name##Object, field), READONLY, doc}

/* A compiled indicator's type: its methods and members are Name##_methods and Name##_members. */
#define INDICATOR_TYPE(Name, py_name, dealloc, doc)            \
    static PyTypeObject Name##Type = {                          \
        PyVarObject_HEAD_INIT(NULL, 0)                          \
        .tp_name = "tickvault._indicators." py_name,            \
        .tp_basicsize = sizeof(Name##Object),                   \
        .tp_dealloc = dealloc,                                  \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,   \
        .tp_doc = doc,                                          \
        .tp_methods = Name##_methods,                           \
        .tp_members = Name##_members,                           \
        .tp_init = (initproc)Name##_init,                       \
        .tp_new = PyType_GenericNew,                            \
    };

/* update(close), reset() and the deallocator of an indicator that owns a buffer (`field`, NULL until
 * __init__ ran: refused then), its methods table, and its type. step(self, close) returns 0, or -1
 * with an exception set; Name##_clear_state(self) is the fresh state. */
#define BUFFERED_TYPE(Name, field, py_name, step, doc)                                                 \
    static PyObject *Name##_update(Name##Object *self, PyObject *arg) {                                \
        double close;                                                                                  \
        if (as_double(arg, &close) || not_initialised(self->field, py_name) || step(self, close))      \
            return NULL;                                                                               \
        Py_RETURN_NONE;                                                                                \
    }                                                                                                  \
    static PyObject *Name##_reset(Name##Object *self, PyObject *unused) {                              \
        (void)unused;                                                                                  \
        if (not_initialised(self->field, py_name)) return NULL;                                        \
        Name##_clear_state(self);                                                                      \
        Py_RETURN_NONE;                                                                                \
    }                                                                                                  \
    static void Name##_dealloc(Name##Object *self) {                                                   \
        PyMem_Free(self->field);                                                                       \
        Py_TYPE(self)->tp_free((PyObject *)self);                                                      \
    }                                                                                                  \
    static PyMethodDef Name##_methods[] = {                                                            \
        {"update", (PyCFunction)Name##_update, METH_O, "update(close): one more close."},              \
        {"reset", (PyCFunction)Name##_reset, METH_NOARGS, "reset(): back to the fresh state."},        \
        {NULL, NULL, 0, NULL},                                                                         \
    };                                                                                                 \
    INDICATOR_TYPE(Name, py_name, (destructor)Name##_dealloc, doc)

/* ------------------------------------------------------------------------------------------ */
/* SMA */

typedef struct {
    PyObject_HEAD
    double *ring;          /* bound: period doubles, the window */
    Py_ssize_t period;
    Py_ssize_t index;
    Py_ssize_t wraps;      /* full turns of the ring since the last exact sum */
    Py_ssize_t recompute_every;
    double sum;
    double value;
    char ready;
} SMAObject;

static void SMA_clear_state(SMAObject *self) {
    for (Py_ssize_t i = 0; i < self->period; i++) self->ring[i] = 0.0;
    self->index = 0;
    self->sum = 0.0;
    self->wraps = 0;
    self->value = Py_NAN;
    self->ready = 0;
}

static int SMA_init(SMAObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"period", "recompute_every", NULL};
    Py_ssize_t period, recompute_every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nn:SMA", keywords, &period, &recompute_every))
        return -1;
    if (period < 1 || recompute_every < 1) {
        PyErr_SetString(PyExc_ValueError, "SMA period and recompute_every must be >= 1");
        return -1;
    }
    if (new_buffer(&self->ring, period)) return -1;
    self->period = period;
    self->recompute_every = recompute_every;
    SMA_clear_state(self);
    return 0;
}

static int sma_step(SMAObject *self, double close) {
    double total;
    double *ring = self->ring;
    Py_ssize_t index = self->index;
    if (self->ready) {
        total = self->sum + close - ring[index];
        ring[index] = close;
        index += 1;
        if (index == self->period) {
            index = 0;
            self->wraps += 1;
            if (self->wraps * self->period >= self->recompute_every) { /* running sums drift */
                self->wraps = 0;
                if (fsum_of(ring, self->period, 0, 0.0, &total)) return -1;
            }
        }
        self->index = index;
        self->sum = total;
        self->value = total / (double)self->period;
        return 0;
    }
    ring[index] = close;
    total = self->sum + close;
    self->sum = total;
    index += 1;
    if (index == self->period) {
        self->index = 0;
        self->value = total / (double)self->period;
        self->ready = 1;
    } else {
        self->index = index;
    }
    return 0;
}

static PyMemberDef SMA_members[] = {
    MEMBER(SMA, T_PYSSIZET, period, "the window length"),
    MEMBER(SMA, T_DOUBLE, value, "the mean of the window; NaN until ready"),
    MEMBER(SMA, T_BOOL, ready, "True once the window has filled"),
    {NULL, 0, 0, 0, NULL},
};

BUFFERED_TYPE(SMA, ring, "SMA", sma_step,
              "SMA(period, recompute_every): incremental.PySMA compiled; use tickvault.indicators.SMA.")

/* ------------------------------------------------------------------------------------------ */
/* VWAP */

typedef struct {
    PyObject_HEAD
    double pv;
    double volume;
    double value;
} VWAPObject;

static void VWAP_clear_state(VWAPObject *self) {
    self->pv = 0.0;
    self->volume = 0.0;
    self->value = Py_NAN;
}

static int VWAP_init(VWAPObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":VWAP", keywords)) return -1;
    VWAP_clear_state(self);
    return 0;
}

/* The bar's price: its own vwap when given (not None, not NaN), else the typical price. */
static int vwap_price(PyObject *bar_vwap, double high, double low, double close, double *price) {
    if (bar_vwap != NULL && bar_vwap != Py_None) {
        if (as_double(bar_vwap, price)) return -1;
        if (*price == *price) return 0;
    }
    *price = (high + low + close) / 3.0; /* None or NaN: the bar has no vw */
    return 0;
}

static void vwap_step(VWAPObject *self, double price, double volume) {
    double pv = self->pv + price * volume;
    double cumulative = self->volume + volume;
    self->pv = pv;
    self->volume = cumulative;
    if (cumulative != 0.0) self->value = pv / cumulative;
}

/* high, low, close, volume and the price from bar_vwap, all converted before any state changes. */
static int bar_values(PyObject *const *in, double *high, double *low, double *close, double *volume,
                      double *price) {
    if (as_double(in[0], high) || as_double(in[1], low) || as_double(in[2], close)
        || as_double(in[3], volume))
        return -1;
    return vwap_price(in[4], *high, *low, *close, price);
}

static PyObject *VWAP_update(VWAPObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    static const char *const names[] = {"high", "low", "close", "volume", "bar_vwap"};
    PyObject *in[5];
    double high, low, close, volume, price;
    if (parse_args("VWAP.update", names, 4, 5, args, nargs, kwnames, in)
        || bar_values(in, &high, &low, &close, &volume, &price))
        return NULL;
    vwap_step(self, price, volume);
    Py_RETURN_NONE;
}

static PyObject *VWAP_reset(VWAPObject *self, PyObject *unused) {
    (void)unused;
    VWAP_clear_state(self);
    Py_RETURN_NONE;
}

static PyObject *VWAP_ready(VWAPObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->volume != 0.0);
}

static PyMethodDef VWAP_methods[] = {
    {"update", (PyCFunction)(void (*)(void))VWAP_update, METH_FASTCALL | METH_KEYWORDS,
     "update(high, low, close, volume, bar_vwap=None): one more bar."},
    {"reset", (PyCFunction)VWAP_reset, METH_NOARGS, "reset(): a new session."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef VWAP_members[] = {
    MEMBER(VWAP, T_DOUBLE, value, "the session VWAP; NaN until volume"),
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef VWAP_getset[] = {
    {"ready", (getter)VWAP_ready, NULL, "True once some volume has traded this session", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VWAPType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tickvault._indicators.VWAP",
    .tp_basicsize = sizeof(VWAPObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "VWAP(): incremental.PyVWAP compiled; use tickvault.indicators.VWAP.",
    .tp_methods = VWAP_methods,
    .tp_members = VWAP_members,
    .tp_getset = VWAP_getset,
    .tp_init = (initproc)VWAP_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------ */
/* EMA, RSI, ATR: a few doubles each */

/* A period argument: an int >= 1 (the Python classes check it first, with their own error). */
static int parse_period(PyObject *args, PyObject *kwds, const char *format, Py_ssize_t *period) {
    static char *keywords[] = {"period", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, keywords, period)) return -1;
    if (*period < 1) {
        PyErr_SetString(PyExc_ValueError, "period must be >= 1");
        return -1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    Py_ssize_t period;
    double k;
    Py_ssize_t count;
    double sum;
    double value;
    char ready;
} EMAObject;

static void EMA_clear_state(EMAObject *self) {
    self->count = 0;
    self->sum = 0.0;
    self->value = Py_NAN;
    self->ready = 0;
}

static int EMA_init(EMAObject *self, PyObject *args, PyObject *kwds) {
    if (parse_period(args, kwds, "n:EMA", &self->period)) return -1;
    self->k = 2.0 / (double)(self->period + 1); /* definitions.ema_k */
    EMA_clear_state(self);
    return 0;
}

static inline void ema_step(EMAObject *self, double close) {
    if (self->ready) {
        double value = self->value;
        self->value = value + self->k * (close - value);
        return;
    }
    self->sum += close;
    self->count += 1;
    if (self->count == self->period) {
        self->value = self->sum / (double)self->period;
        self->ready = 1;
    }
}

/* RSI and ATR: a mean seed, then Wilder smoothing, over what each input adds to the one before it
 * (RSI: the change; ATR: the true range). RSI keeps its gain and loss sums, then averages, in `up`
 * and `down`; ATR its true ranges' sum in `up` (its average is `value`). */
typedef struct {
    PyObject_HEAD
    Py_ssize_t period;
    double keep;        /* period - 1 */
    double prev;        /* the previous close */
    Py_ssize_t count;   /* inputs seen minus one = changes / true ranges seen */
    double up;
    double down;
    double value;
    char ready;
} WilderObject;
typedef WilderObject RSIObject;
typedef WilderObject ATRObject;

static void Wilder_clear_state(WilderObject *self) {
    self->prev = Py_NAN;
    self->count = -1;
    self->up = 0.0;
    self->down = 0.0;
    self->value = Py_NAN;
    self->ready = 0;
}
#define RSI_clear_state Wilder_clear_state
#define ATR_clear_state Wilder_clear_state

static int wilder_init(WilderObject *self, PyObject *args, PyObject *kwds, const char *format) {
    if (parse_period(args, kwds, format, &self->period)) return -1;
    self->keep = (double)(self->period - 1);
    Wilder_clear_state(self);
    return 0;
}

static int RSI_init(RSIObject *self, PyObject *args, PyObject *kwds) {
    return wilder_init(self, args, kwds, "n:RSI");
}

static int ATR_init(ATRObject *self, PyObject *args, PyObject *kwds) {
    return wilder_init(self, args, kwds, "n:ATR");
}

static inline double rsi_from_averages(double gain, double loss) {
    double total = gain + loss;
    return total != 0.0 ? 100.0 * (gain / total) : 0.0;
}

static inline void rsi_step(RSIObject *self, double close) {
    double change = close - self->prev;
    double period = (double)self->period;
    self->prev = close;
    if (self->ready) { /* TA-Lib's exact operation order */
        double keep = self->keep, gain, loss;
        if (change < 0.0) {
            gain = self->up * keep / period;
            loss = (self->down * keep - change) / period;
        } else {
            gain = (self->up * keep + change) / period;
            loss = self->down * keep / period;
        }
        self->up = gain;
        self->down = loss;
        self->value = rsi_from_averages(gain, loss);
        return;
    }
    self->count += 1;
    if (self->count == 0) return; /* the first close: no change yet */
    if (change < 0.0)
        self->down -= change;
    else
        self->up += change;
    if (self->count < self->period) return;
    self->up = self->up / period;
    self->down = self->down / period;
    self->value = rsi_from_averages(self->up, self->down);
    self->ready = 1;
}

static inline void atr_step(ATRObject *self, double high, double low, double close) {
    double prev = self->prev, tr;
    self->prev = close;
    if (high >= low) /* TA-Lib's max(h - l, |c' - h|, |c' - l|) when high >= low, bit for bit */
        tr = (high > prev ? high : prev) - (low < prev ? low : prev);
    else
        tr = true_range(high, low, prev);
    if (self->ready) {
        self->value = (self->value * self->keep + tr) / (double)self->period;
        return;
    }
    self->count += 1;
    if (self->count == 0) return; /* bar 0: no previous close, no true range */
    self->up += tr;
    if (self->count == self->period) {
        self->value = self->up / (double)self->period;
        self->ready = 1;
    }
}

static PyObject *EMA_update(EMAObject *self, PyObject *arg) {
    double close;
    if (as_double(arg, &close)) return NULL;
    ema_step(self, close);
    Py_RETURN_NONE;
}

static PyObject *RSI_update(RSIObject *self, PyObject *arg) {
    double close;
    if (as_double(arg, &close)) return NULL;
    rsi_step(self, close);
    Py_RETURN_NONE;
}

static PyObject *ATR_update(ATRObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"high", "low", "close"};
    PyObject *in[3];
    double high, low, close;
    if (parse_args("ATR.update", names, 3, 3, args, nargs, kwnames, in) || as_double(in[0], &high)
        || as_double(in[1], &low) || as_double(in[2], &close))
        return NULL;
    atr_step(self, high, low, close);
    Py_RETURN_NONE;
}

#define RESET_METHOD(Name)                                          \
    static PyObject *Name##_reset(Name##Object *self, PyObject *unused) { \
        (void)unused;                                               \
        Name##_clear_state(self);                                   \
        Py_RETURN_NONE;                                             \
    }
RESET_METHOD(EMA)
RESET_METHOD(RSI)
RESET_METHOD(ATR)

#define RESET_DEF(Name) {"reset", (PyCFunction)Name##_reset, METH_NOARGS, "reset(): back to the fresh state."}

static PyMethodDef EMA_methods[] = {
    {"update", (PyCFunction)EMA_update, METH_O, "update(close): one more close."}, RESET_DEF(EMA),
    {NULL, NULL, 0, NULL},
};
static PyMethodDef RSI_methods[] = {
    {"update", (PyCFunction)RSI_update, METH_O, "update(close): one more close."}, RESET_DEF(RSI),
    {NULL, NULL, 0, NULL},
};
static PyMethodDef ATR_methods[] = {
    {"update", (PyCFunction)(void (*)(void))ATR_update, METH_FASTCALL | METH_KEYWORDS,
     "update(high, low, close): one more bar."}, RESET_DEF(ATR),
    {NULL, NULL, 0, NULL},
};

#define SCALAR_MEMBERS(Name)                                                        \
    MEMBER(Name, T_PYSSIZET, period, "the period"),                                 \
    MEMBER(Name, T_DOUBLE, value, "the current value; NaN until ready"),            \
    MEMBER(Name, T_BOOL, ready, "True from the first valid value on"),              \
    {NULL, 0, 0, 0, NULL}

static PyMemberDef EMA_members[] = {SCALAR_MEMBERS(EMA)};
static PyMemberDef RSI_members[] = {SCALAR_MEMBERS(RSI)};
static PyMemberDef ATR_members[] = {SCALAR_MEMBERS(ATR)};

INDICATOR_TYPE(EMA, "EMA", NULL, "EMA(period): incremental.PyEMA compiled; use tickvault.indicators.EMA.")
INDICATOR_TYPE(RSI, "RSI", NULL, "RSI(period): incremental.PyRSI compiled; use tickvault.indicators.RSI.")
INDICATOR_TYPE(ATR, "ATR", NULL, "ATR(period): incremental.PyATR compiled; use tickvault.indicators.ATR.")

/* ------------------------------------------------------------------------------------------ */
/* MACD */

typedef struct {
    PyObject_HEAD
    double *warm;           /* bound: the first `slow` closes, unused once both EMAs are seeded */
    Py_ssize_t warm_count;  /* closes in warm; -1 once seeded (PyMACD's _warm is None) */
    Py_ssize_t fast, slow, signal_period;
    double kf, ks, k9;
    double fast_ema, slow_ema;
    double line_sum;
    Py_ssize_t line_count;
    double macd, signal, hist;
    char ready;
} MACDObject;

static void MACD_clear_state(MACDObject *self) {
    self->warm_count = 0;
    self->fast_ema = self->slow_ema = Py_NAN;
    self->line_sum = 0.0;
    self->line_count = 0;
    self->macd = self->signal = self->hist = Py_NAN;
    self->ready = 0;
}

static int MACD_init(MACDObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fast", "slow", "signal", NULL};
    Py_ssize_t fast, slow, signal;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnn:MACD", keywords, &fast, &slow, &signal)) return -1;
    if (fast < 2 || slow < fast || signal < 1) { /* definitions.macd_periods orders them first */
        PyErr_SetString(PyExc_ValueError, "MACD needs 2 <= fast <= slow and signal >= 1");
        return -1;
    }
    if (new_buffer(&self->warm, slow)) return -1;
    self->fast = fast;
    self->slow = slow;
    self->signal_period = signal;
    self->kf = 2.0 / (double)(fast + 1); /* definitions.ema_k */
    self->ks = 2.0 / (double)(slow + 1);
    self->k9 = 2.0 / (double)(signal + 1);
    MACD_clear_state(self);
    return 0;
}

static inline int macd_step(MACDObject *self, double close) {
    if (self->ready) {
        double fast = self->fast_ema, slow = self->slow_ema;
        fast += self->kf * (close - fast);
        slow += self->ks * (close - slow);
        self->fast_ema = fast;
        self->slow_ema = slow;
        double line = fast - slow, signal = self->signal;
        signal += self->k9 * (line - signal);
        self->macd = line;
        self->signal = signal;
        self->hist = line - signal;
        return 0;
    }
    if (self->warm_count >= 0) {
        self->warm[self->warm_count++] = close;
        if (self->warm_count < self->slow) return 0;
        double fast_seed = 0.0, slow_seed = 0.0;
        for (Py_ssize_t i = self->slow - self->fast; i < self->slow; i++) fast_seed += self->warm[i];
        for (Py_ssize_t i = 0; i < self->slow; i++) slow_seed += self->warm[i];
        self->fast_ema = fast_seed / (double)self->fast;
        self->slow_ema = slow_seed / (double)self->slow;
        self->warm_count = -1;
    } else {
        double fast = self->fast_ema, slow = self->slow_ema;
        self->fast_ema = fast + self->kf * (close - fast);
        self->slow_ema = slow + self->ks * (close - slow);
    }
    double line = self->fast_ema - self->slow_ema;
    self->line_sum += line;
    self->line_count += 1;
    if (self->line_count == self->signal_period) {
        self->macd = line;
        self->signal = self->line_sum / (double)self->signal_period;
        self->hist = line - self->signal;
        self->ready = 1;
    }
    return 0;
}

static PyMemberDef MACD_members[] = {
    MEMBER(MACD, T_PYSSIZET, fast, "the fast EMA's period"),
    MEMBER(MACD, T_PYSSIZET, slow, "the slow EMA's period"),
    MEMBER(MACD, T_PYSSIZET, signal_period, "the signal EMA's period"),
    MEMBER(MACD, T_DOUBLE, macd, "the MACD line; NaN until ready"),
    MEMBER(MACD, T_DOUBLE, signal, "the signal line; NaN until ready"),
    MEMBER(MACD, T_DOUBLE, hist, "line - signal; NaN until ready"),
    MEMBER(MACD, T_BOOL, ready, "True from the first valid value on"),
    {NULL, 0, 0, 0, NULL},
};

BUFFERED_TYPE(MACD, warm, "MACD", macd_step,
              "MACD(fast, slow, signal): incremental.PyMACD compiled; use tickvault.indicators.MACD.")

/* ------------------------------------------------------------------------------------------ */
/* Bollinger bands (the numerics are explained in incremental.PyBollingerBands) */

typedef struct {
    PyObject_HEAD
    double *ring;          /* bound: period doubles, the window */
    Py_ssize_t period;
    Py_ssize_t index;
    Py_ssize_t count;
    Py_ssize_t since_exact;
    Py_ssize_t recompute_every;
    double drift_limit;
    double dev_up, dev_dn;
    double reference, a, b;
    double upper, middle, lower, stddev;
    char ready;
} BandsObject;

static void Bands_clear_state(BandsObject *self) {
    for (Py_ssize_t i = 0; i < self->period; i++) self->ring[i] = 0.0;
    self->index = 0;
    self->count = 0;
    self->reference = self->a = self->b = 0.0;
    self->since_exact = 0;
    self->upper = self->middle = self->lower = self->stddev = Py_NAN;
    self->ready = 0;
}

static int Bands_init(BandsObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"period", "dev_up", "dev_dn", "recompute_every", "drift_limit", NULL};
    Py_ssize_t period, recompute_every;
    double dev_up, dev_dn, drift_limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nddnd:BollingerBands", keywords, &period, &dev_up,
                                     &dev_dn, &recompute_every, &drift_limit))
        return -1;
    if (period < 1 || recompute_every < 1) {
        PyErr_SetString(PyExc_ValueError, "BollingerBands period and recompute_every must be >= 1");
        return -1;
    }
    if (new_buffer(&self->ring, period)) return -1;
    self->period = period;
    self->dev_up = dev_up;
    self->dev_dn = dev_dn;
    self->recompute_every = recompute_every;
    self->drift_limit = drift_limit;
    Bands_clear_state(self);
    return 0;
}

/* PyBollingerBands._recompute: the reference and both sums from the ring, exactly. */
static int bands_recompute(BandsObject *self) {
    double total, refinement, period = (double)self->period;
    if (fsum_of(self->ring, self->period, 0, 0.0, &total)) return -1;
    double reference = total / period;
    if (fsum_of(self->ring, self->period, 1, reference, &refinement)) return -1;
    reference += refinement / period; /* exact when flat */
    double a = 0.0, b = 0.0;
    for (Py_ssize_t i = 0; i < self->period; i++) {
        double deviation = self->ring[i] - reference;
        a += deviation;
        b += deviation * deviation;
    }
    self->reference = reference;
    self->a = a;
    self->b = b;
    self->since_exact = 0;
    return 0;
}

static int bands_step(BandsObject *self, double close) {
    double *ring = self->ring;
    Py_ssize_t index = self->index;
    double period = (double)self->period, a, m2;
    if (self->ready) {
        double old = ring[index];
        ring[index] = close;
        double reference = self->reference;
        double new = close - reference, gone = old - reference;
        a = self->a + (new - gone);
        double b = self->b + (new * new - gone * gone);
        m2 = b - a * a / period;
        Py_ssize_t since = self->since_exact + 1;
        if (since >= self->recompute_every || a * a > self->drift_limit * period * m2) {
            if (bands_recompute(self)) return -1;
            a = self->a;
            m2 = self->b - a * a / period;
        } else {
            self->a = a;
            self->b = b;
            self->since_exact = since;
        }
    } else {
        ring[index] = close;
        self->count += 1;
        if (self->count < self->period) {
            self->index = index + 1;
            return 0;
        }
        if (bands_recompute(self)) return -1;
        a = self->a;
        m2 = self->b - a * a / period;
        self->ready = 1;
    }
    index += 1;
    self->index = index == self->period ? 0 : index;
    double mean = self->reference + a / period;
    double std = m2 > 0.0 ? sqrt(m2 / period) : 0.0;
    self->stddev = std;
    self->middle = mean;
    self->upper = mean + self->dev_up * std;
    self->lower = mean - self->dev_dn * std;
    return 0;
}

static PyMemberDef Bands_members[] = {
    MEMBER(Bands, T_PYSSIZET, period, "the window length"),
    MEMBER(Bands, T_DOUBLE, dev_up, "deviations above the middle"),
    MEMBER(Bands, T_DOUBLE, dev_dn, "deviations below the middle"),
    MEMBER(Bands, T_DOUBLE, upper, "the upper band; NaN until ready"),
    MEMBER(Bands, T_DOUBLE, middle, "the window's mean; NaN until ready"),
    MEMBER(Bands, T_DOUBLE, lower, "the lower band; NaN until ready"),
    MEMBER(Bands, T_DOUBLE, stddev, "the population deviation; NaN until ready"),
    MEMBER(Bands, T_BOOL, ready, "True once the window has filled"),
    {NULL, 0, 0, 0, NULL},
};

BUFFERED_TYPE(Bands, ring, "BollingerBands", bands_step,
              "BollingerBands(period, dev_up, dev_dn, recompute_every, drift_limit): "
              "incremental.PyBollingerBands compiled; use tickvault.indicators.BollingerBands.")

/* ------------------------------------------------------------------------------------------ */
/* IndicatorSet: bundle.PyIndicatorSet.update over the compiled members, in one call */

#define SET_MEMBERS 8
static const char *const set_names[SET_MEMBERS] = {"rsi", "ema_fast", "ema_slow", "sma", "macd",
                                                   "bands", "atr", "vwap"};
static PyTypeObject *const set_types[SET_MEMBERS] = {&RSIType, &EMAType, &EMAType, &SMAType,
                                                     &MACDType, &BandsType, &ATRType, &VWAPType};

typedef struct {
    PyObject_HEAD
    PyObject *members[SET_MEMBERS]; /* in set_names' order, each an instance of set_types' */
} SetObject;

static int Set_init(SetObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"rsi", "ema_fast", "ema_slow", "sma", "macd", "bands", "atr", "vwap", NULL};
    PyObject *in[SET_MEMBERS];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOO:IndicatorSet", keywords, &in[0], &in[1],
                                     &in[2], &in[3], &in[4], &in[5], &in[6], &in[7]))
        return -1;
    for (int i = 0; i < SET_MEMBERS; i++) {
        if (!PyObject_TypeCheck(in[i], set_types[i])) {
            PyErr_Format(PyExc_TypeError, "IndicatorSet: %s must be a %s, not %.100s", set_names[i],
                         set_types[i]->tp_name, Py_TYPE(in[i])->tp_name);
            return -1;
        }
    }
    /* The rings must exist: an SMA, MACD or bands whose __init__ never ran has none. */
    if (not_initialised(((SMAObject *)in[3])->ring, "SMA")
        || not_initialised(((MACDObject *)in[4])->warm, "MACD")
        || not_initialised(((BandsObject *)in[5])->ring, "BollingerBands"))
        return -1;
    for (int i = 0; i < SET_MEMBERS; i++) {
        Py_INCREF(in[i]);
        Py_XSETREF(self->members[i], in[i]);
    }
    return 0;
}

static int Set_traverse(SetObject *self, visitproc visit, void *arg) {
    for (int i = 0; i < SET_MEMBERS; i++) Py_VISIT(self->members[i]);
    return 0;
}

static int Set_clear(SetObject *self) {
    for (int i = 0; i < SET_MEMBERS; i++) Py_CLEAR(self->members[i]);
    return 0;
}

static void Set_dealloc(SetObject *self) {
    PyObject_GC_UnTrack(self);
    Set_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Every argument is converted before any member moves: a refused bar changes nothing. The members
 * step in PyIndicatorSet.update's order, so an exact recompute's error (math.fsum of inf and -inf)
 * stops at the same member with the same states behind it. */
static PyObject *Set_update(SetObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"high", "low", "close", "volume", "bar_vwap", "in_session"};
    PyObject *in[6];
    double high, low, close, volume, price;
    if (parse_args("IndicatorSet.update", names, 4, 6, args, nargs, kwnames, in)
        || bar_values(in, &high, &low, &close, &volume, &price))
        return NULL;
    int in_session = in[5] == NULL ? 1 : PyObject_IsTrue(in[5]);
    if (in_session < 0) return NULL;
    PyObject **m = self->members;
    if (m[0] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "IndicatorSet.__init__ was not called");
        return NULL;
    }
    rsi_step((RSIObject *)m[0], close);
    ema_step((EMAObject *)m[1], close);
    ema_step((EMAObject *)m[2], close);
    if (sma_step((SMAObject *)m[3], close)) return NULL;
    (void)macd_step((MACDObject *)m[4], close); /* cannot fail */
    if (bands_step((BandsObject *)m[5], close)) return NULL;
    atr_step((ATRObject *)m[6], high, low, close);
    if (in_session)
        vwap_step((VWAPObject *)m[7], price, volume);
    else /* a bar of no session: no VWAP, and nothing carried into the next session */
        VWAP_clear_state((VWAPObject *)m[7]);
    Py_RETURN_NONE;
}

static PyMethodDef Set_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Set_update, METH_FASTCALL | METH_KEYWORDS,
     "update(high, low, close, volume, bar_vwap=None, in_session=True): one more closed bar."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Set_members[] = {
    {"rsi", T_OBJECT_EX, offsetof(SetObject, members[0]), READONLY, "RSI(14)"},
    {"ema_fast", T_OBJECT_EX, offsetof(SetObject, members[1]), READONLY, "EMA(12)"},
    {"ema_slow", T_OBJECT_EX, offsetof(SetObject, members[2]), READONLY, "EMA(26)"},
    {"sma", T_OBJECT_EX, offsetof(SetObject, members[3]), READONLY, "SMA(20)"},
    {"macd", T_OBJECT_EX, offsetof(SetObject, members[4]), READONLY, "MACD(12, 26, 9)"},
    {"bands", T_OBJECT_EX, offsetof(SetObject, members[5]), READONLY, "BollingerBands(20, 2, 2)"},
    {"atr", T_OBJECT_EX, offsetof(SetObject, members[6]), READONLY, "ATR(14)"},
    {"vwap", T_OBJECT_EX, offsetof(SetObject, members[7]), READONLY, "session VWAP"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tickvault._indicators.IndicatorSet",
    .tp_basicsize = sizeof(SetObject),
    .tp_dealloc = (destructor)Set_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "IndicatorSet(rsi, ema_fast, ema_slow, sma, macd, bands, atr, vwap): the compiled members "
              "stepped by one update call; use tickvault.indicators.IndicatorSet.",
    .tp_traverse = (traverseproc)Set_traverse,
    .tp_clear = (inquiry)Set_clear,
    .tp_methods = Set_methods,
    .tp_members = Set_members,
    .tp_init = (initproc)Set_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------ */
/* ATR and MACD over arrays */

static int get_doubles(PyObject *obj, Py_buffer *view, int writable, const char *function, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags)) return -1;
    if (view->ndim != 1 || view->itemsize != 8 || view->format == NULL || strcmp(view->format, "d") != 0) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a 1-d contiguous float64 array", function, name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Four 1-d float64 buffers of one length, views[i] for objs[i], writable from index `first_out`
 * on. Returns the length, or -1 with an exception set and no buffer held. */
static Py_ssize_t get_arrays(PyObject *const objs[4], Py_buffer views[4], int first_out,
                             const char *function, const char *const names[4]) {
    int got;
    for (got = 0; got < 4; got++)
        if (get_doubles(objs[got], &views[got], got >= first_out, function, names[got])) goto fail;
    Py_ssize_t n = views[0].len / 8;
    if (views[1].len / 8 == n && views[2].len / 8 == n && views[3].len / 8 == n) return n;
    PyErr_Format(PyExc_ValueError, "%s: %s, %s, %s and %s must have the same length", function,
                 names[0], names[1], names[2], names[3]);
fail:
    while (got-- > 0) PyBuffer_Release(&views[got]);
    return -1;
}

static void release_arrays(Py_buffer views[4]) {
    for (int i = 0; i < 4; i++) PyBuffer_Release(&views[i]);
}

static PyObject *atr_into(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *objs[4];
    Py_ssize_t period;
    if (!PyArg_ParseTuple(args, "OOOnO:atr_into", &objs[0], &objs[1], &objs[2], &period, &objs[3]))
        return NULL;
    static const char *const names[4] = {"high", "low", "close", "out"};
    Py_buffer views[4];
    Py_ssize_t n = get_arrays(objs, views, 3, "atr_into", names);
    if (n < 0) return NULL;
    if (period < 1 || n <= period) {
        PyErr_SetString(PyExc_ValueError, "atr_into: needs 1 <= period < len(high)");
        release_arrays(views);
        return NULL;
    }
    const double *high = views[0].buf, *low = views[1].buf, *close = views[2].buf;
    double *out = views[3].buf;
    /* The seed: the mean of the true ranges of bars 1..period (bar 0 has none). */
    double sum = 0.0;
    for (Py_ssize_t i = 1; i <= period; i++) sum += true_range(high[i], low[i], close[i - 1]);
    double y = sum / (double)period;
    out[period] = y;
    /* Wilder smoothing, as vectorized.atr defines it: decay = (p - 1) / p, gain = 1 / p. */
    const double decay = (double)(period - 1) / (double)period, gain = 1.0 / (double)period;
    for (Py_ssize_t i = period + 1; i < n; i++) {
        y = decay * y + gain * true_range(high[i], low[i], close[i - 1]);
        out[i] = y;
    }
    release_arrays(views);
    Py_RETURN_NONE;
}

/* MACD over an array, as vectorized.macd defines it (TA-Lib's seeding): both EMAs seeded at index
 * slow - 1 (the slow one with the mean of close[0:slow], the fast one with the mean of
 * close[slow - fast:slow]), then y = (1 - k) * y + k * close; the line is fast - slow; the signal is
 * seeded at index first = slow + signal - 2 with the mean of the line's first `signal` values, then
 * the same recurrence over the line. The three recurrences are independent chains in one loop,
 * so they overlap in the CPU (one multiply-add of latency per bar for all three). */
static PyObject *macd_into(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *objs[4];
    Py_ssize_t fast, slow, signal;
    if (!PyArg_ParseTuple(args, "OnnnOOO:macd_into", &objs[0], &fast, &slow, &signal, &objs[1],
                          &objs[2], &objs[3]))
        return NULL;
    static const char *const names[4] = {"close", "line", "signal", "hist"};
    Py_buffer views[4];
    Py_ssize_t n = get_arrays(objs, views, 1, "macd_into", names);
    if (n < 0) return NULL;
    Py_ssize_t first = slow + signal - 2;
    if (fast < 2 || slow < fast || signal < 1 || n <= first) {
        PyErr_SetString(PyExc_ValueError, "macd_into: needs 2 <= fast <= slow, signal >= 1, "
                                          "slow + signal - 2 < len(close)");
        release_arrays(views);
        return NULL;
    }
    const double *x = views[0].buf;
    double *line = views[1].buf, *sig = views[2].buf, *hist = views[3].buf;
    double fast_sum = 0.0, slow_sum = 0.0;
    for (Py_ssize_t i = 0; i < slow; i++) slow_sum += x[i];
    for (Py_ssize_t i = slow - fast; i < slow; i++) fast_sum += x[i];
    const double kf = 2.0 / (double)(fast + 1), ks = 2.0 / (double)(slow + 1), k9 = 2.0 / (double)(signal + 1);
    const double df = 1.0 - kf, ds = 1.0 - ks, d9 = 1.0 - k9;
    double f = fast_sum / (double)fast, s = slow_sum / (double)slow;
    /* The line's first `signal` values (indexes slow - 1 .. first): the signal's seed. */
    double line_sum = f - s;
    for (Py_ssize_t i = slow; i <= first; i++) {
        f = df * f + kf * x[i];
        s = ds * s + ks * x[i];
        line_sum += f - s;
    }
    double g = line_sum / (double)signal, l = f - s;
    line[first] = l;
    sig[first] = g;
    hist[first] = l - g;
    for (Py_ssize_t i = first + 1; i < n; i++) {
        f = df * f + kf * x[i];
        s = ds * s + ks * x[i];
        l = f - s;
        g = d9 * g + k9 * l;
        line[i] = l;
        sig[i] = g;
        hist[i] = l - g;
    }
    release_arrays(views);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"atr_into", atr_into, METH_VARARGS,
     "atr_into(high, low, close, period, out): ATR from index `period` on into out (float64 arrays "
     "of one length); out[:period] is left as it was."},
    {"macd_into", macd_into, METH_VARARGS,
     "macd_into(close, fast, slow, signal, line, signal_out, hist): MACD from index slow + signal - 2 "
     "on into the three outputs (float64 arrays of close's length); earlier values are left as they were."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tickvault._indicators",
    "Compiled indicator kernels; use tickvault.indicators.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__indicators(void) {
    static PyTypeObject *const types[] = {&SMAType, &EMAType, &RSIType, &ATRType, &MACDType,
                                          &BandsType, &VWAPType, &SetType};
    static const char *const type_names[] = {"SMA", "EMA", "RSI", "ATR", "MACD", "BollingerBands",
                                             "VWAP", "IndicatorSet"};
    const int n_types = (int)(sizeof(types) / sizeof(types[0]));
    for (int i = 0; i < n_types; i++)
        if (PyType_Ready(types[i]) < 0) return NULL;
    PyObject *math = PyImport_ImportModule("math");
    if (math == NULL) return NULL;
    math_fsum = PyObject_GetAttrString(math, "fsum");
    Py_DECREF(math);
    if (math_fsum == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "FORMAT_VERSION", FORMAT_VERSION)) goto fail;
    for (int i = 0; i < n_types; i++) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, type_names[i], (PyObject *)types[i])) {
            Py_DECREF(types[i]);
            goto fail;
        }
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
