/* tickvault._indicators: compiled twins of the indicators whose Python cost was all interpreter.
 *
 * Used only through tickvault.indicators (incremental.py, vectorized.py): the definitions, the
 * argument checks, the fallbacks and the tests live there. Each piece does, operation for
 * operation, what its Python twin does, so the results are the same bits:
 *
 *   SMA(period, recompute_every)  incremental.PySMA: a ring of `period` doubles, a running sum,
 *                                 math.fsum of the ring every `recompute_every` values;
 *   VWAP()                        incremental.PyVWAP: two running sums;
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
 * could not get below ~180 ns that way (talipp: ~800). ATR's numpy form needs ~7 passes over the
 * data plus the BLAS recurrence (~3.8 ns/value at best against TA-Lib's 1.3), MACD's three BLAS
 * recurrences ~11 ns/value against TA-Lib's 2.4.
 *
 * Exactness: built with -ffp-contract=off (setup.py) so no a * b + c is fused into one rounding
 * where Python rounds twice. What it must never do: read or write outside a buffer (every length
 * is checked), keep a reference to a caller's array, or release the GIL while touching Python
 * objects. Memory: SMA holds its ring (8 bytes x period); nothing else outlives a call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

#define FORMAT_VERSION 2 /* 2: macd_into */

static PyObject *math_fsum; /* math.fsum: the SMA's exact recompute, the same function Python's twin calls */

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
    if (period > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_NoMemory();
        return -1;
    }
    double *ring = PyMem_Malloc((size_t)period * sizeof(double));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->ring);
    self->ring = ring;
    self->period = period;
    self->recompute_every = recompute_every;
    SMA_clear_state(self);
    return 0;
}

static void SMA_dealloc(SMAObject *self) {
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int SMA_check(SMAObject *self) {
    if (self->ring == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SMA.__init__ was not called");
        return -1;
    }
    return 0;
}

/* math.fsum(ring): exactly what PySMA computes, errors (inf - inf) included. */
static int SMA_exact_sum(SMAObject *self, double *out) {
    PyObject *values = PyList_New(self->period);
    if (values == NULL) return -1;
    for (Py_ssize_t i = 0; i < self->period; i++) {
        PyObject *item = PyFloat_FromDouble(self->ring[i]);
        if (item == NULL) {
            Py_DECREF(values);
            return -1;
        }
        PyList_SET_ITEM(values, i, item);
    }
    PyObject *total = PyObject_CallOneArg(math_fsum, values);
    Py_DECREF(values);
    if (total == NULL) return -1;
    *out = PyFloat_AsDouble(total);
    Py_DECREF(total);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *SMA_update(SMAObject *self, PyObject *arg) {
    double close, total;
    if (as_double(arg, &close) || SMA_check(self)) return NULL;
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
                if (SMA_exact_sum(self, &total)) return NULL;
            }
        }
        self->index = index;
        self->sum = total;
        self->value = total / (double)self->period;
        Py_RETURN_NONE;
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
    Py_RETURN_NONE;
}

static PyObject *SMA_reset(SMAObject *self, PyObject *unused) {
    (void)unused;
    if (SMA_check(self)) return NULL;
    SMA_clear_state(self);
    Py_RETURN_NONE;
}

static PyMethodDef SMA_methods[] = {
    {"update", (PyCFunction)SMA_update, METH_O, "update(close): one more close."},
    {"reset", (PyCFunction)SMA_reset, METH_NOARGS, "reset(): back to the fresh state."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef SMA_members[] = {
    {"period", T_PYSSIZET, offsetof(SMAObject, period), READONLY, "the window length"},
    {"value", T_DOUBLE, offsetof(SMAObject, value), READONLY, "the mean of the window; NaN until ready"},
    {"ready", T_BOOL, offsetof(SMAObject, ready), READONLY, "True once the window has filled"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SMAType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tickvault._indicators.SMA",
    .tp_basicsize = sizeof(SMAObject),
    .tp_dealloc = (destructor)SMA_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "SMA(period, recompute_every): incremental.PySMA compiled; use tickvault.indicators.SMA.",
    .tp_methods = SMA_methods,
    .tp_members = SMA_members,
    .tp_init = (initproc)SMA_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------ */
/* VWAP */

typedef struct {
    PyObject_HEAD
    double pv;
    double volume;
    double value;
} VWAPObject;

static int VWAP_init(VWAPObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":VWAP", keywords)) return -1;
    self->pv = 0.0;
    self->volume = 0.0;
    self->value = Py_NAN;
    return 0;
}

static PyObject *VWAP_update(VWAPObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    PyObject *bar_vwap = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw < 4 || nargs + nkw > 5 || nargs < 4) {
        PyErr_Format(PyExc_TypeError,
                     "VWAP.update(high, low, close, volume, bar_vwap=None) takes 4 or 5 arguments "
                     "(%zd positional, %zd by keyword given)", nargs, nkw);
        return NULL;
    }
    if (nargs == 5) bar_vwap = args[4];
    if (nkw == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "bar_vwap") != 0) {
            PyErr_Format(PyExc_TypeError, "VWAP.update() got an unexpected keyword argument '%U'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        bar_vwap = args[nargs];
    }
    double high, low, close, volume, price;
    if (as_double(args[0], &high) || as_double(args[1], &low) || as_double(args[2], &close)
        || as_double(args[3], &volume))
        return NULL;
    if (bar_vwap == Py_None) {
        price = (high + low + close) / 3.0;
    } else {
        if (as_double(bar_vwap, &price)) return NULL;
        if (price != price) price = (high + low + close) / 3.0; /* NaN: the bar has no vw */
    }
    double pv = self->pv + price * volume;
    double cumulative = self->volume + volume;
    self->pv = pv;
    self->volume = cumulative;
    if (cumulative != 0.0) self->value = pv / cumulative;
    Py_RETURN_NONE;
}

static PyObject *VWAP_reset(VWAPObject *self, PyObject *unused) {
    (void)unused;
    self->pv = 0.0;
    self->volume = 0.0;
    self->value = Py_NAN;
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
    {"value", T_DOUBLE, offsetof(VWAPObject, value), READONLY, "the session VWAP; NaN until volume"},
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
/* ATR and MACD over arrays */

/* TA-Lib's TRANGE for one bar, as definitions.true_range (defined for high < low too). */
static inline double true_range(double high, double low, double prev_close) {
    double greatest = high - low;
    double up = fabs(prev_close - high);
    if (up > greatest) greatest = up;
    double down = fabs(prev_close - low);
    if (down > greatest) greatest = down;
    return greatest;
}

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
    if (PyType_Ready(&SMAType) < 0 || PyType_Ready(&VWAPType) < 0) return NULL;
    PyObject *math = PyImport_ImportModule("math");
    if (math == NULL) return NULL;
    math_fsum = PyObject_GetAttrString(math, "fsum");
    Py_DECREF(math);
    if (math_fsum == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SMAType);
    Py_INCREF(&VWAPType);
    if (PyModule_AddIntConstant(m, "FORMAT_VERSION", FORMAT_VERSION)
        || PyModule_AddObject(m, "SMA", (PyObject *)&SMAType)
        || PyModule_AddObject(m, "VWAP", (PyObject *)&VWAPType)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
