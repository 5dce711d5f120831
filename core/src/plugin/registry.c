/* Plugin registry: loading shared objects, checking descriptors, lookup. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qd_buildconf.h"
#include "qdistill/registry.h"

typedef struct entry {
    const qd_plugin_desc *desc;
    char *origin;     /* file the plugin came from ("<builtin>" for added ones) */
    char *dir;        /* search directory it was found in (for shadowing) */
} entry;

struct qd_registry {
    entry *items;
    size_t n, cap;
    void **handles;
    size_t n_handles, cap_handles;
    char **dirs;            /* directories already scanned (realpath) */
    size_t n_dirs;
    /* files load_dir / load_default could not load, for "unknown plugin"
     * messages: the first three, then a count (qd_registry_problem_note) */
    size_t n_problems;
    char note_base[720];
    char note[760];
};

static const char *const kind_names[] = {
    NULL, "encoder", "ansatz", "observable", "simulator", "distiller", "dataset",
};

const char *qd_kind_name(int kind)
{
    if (kind > 0 && kind < QD_KIND_COUNT_)
        return kind_names[kind];
    return NULL;
}

int qd_kind_from_name(const char *name)
{
    if (!name)
        return 0;
    for (int k = 1; k < QD_KIND_COUNT_; ++k)
        if (strcmp(kind_names[k], name) == 0)
            return k;
    /* accept the plural folder names too ("encoders", "ansatze") */
    if (strcmp(name, "encoders") == 0) return QD_KIND_ENCODER;
    if (strcmp(name, "ansatze") == 0 || strcmp(name, "ansaetze") == 0) return QD_KIND_ANSATZ;
    if (strcmp(name, "observables") == 0) return QD_KIND_OBSERVABLE;
    if (strcmp(name, "simulators") == 0) return QD_KIND_SIMULATOR;
    if (strcmp(name, "distillers") == 0) return QD_KIND_DISTILLER;
    if (strcmp(name, "datasets") == 0) return QD_KIND_DATASET;
    return 0;
}

int qd_registry_create(qd_registry **out, qd_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory creating the plugin registry");
    return QD_OK;
}

void qd_registry_destroy(qd_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->n; ++i) {
        free(reg->items[i].origin);
        free(reg->items[i].dir);
    }
    free(reg->items);
    /* Close in reverse load order. Under ASan/valgrind, keep the objects
     * mapped (QD_KEEP_PLUGINS) so leak reports can still symbolise frames. */
    if (!getenv("QD_KEEP_PLUGINS"))
        for (size_t i = reg->n_handles; i-- > 0;)
            dlclose(reg->handles[i]);
    free(reg->handles);
    for (size_t i = 0; i < reg->n_dirs; ++i)
        free(reg->dirs[i]);
    free(reg->dirs);
    free(reg);
}

/* Remember dir; returns 1 when it (or a path to the same place) was already
 * scanned, so a directory named twice in the search order loads once. */
static int seen_dir(qd_registry *reg, const char *dir)
{
    char *real = realpath(dir, NULL);
    if (!real)
        return 0;
    for (size_t i = 0; i < reg->n_dirs; ++i)
        if (strcmp(reg->dirs[i], real) == 0) {
            free(real);
            return 1;
        }
    char **d = realloc(reg->dirs, (reg->n_dirs + 1) * sizeof *d);
    if (!d) {
        free(real);
        return 0;
    }
    reg->dirs = d;
    reg->dirs[reg->n_dirs++] = real;
    return 0;
}

/* Minimum vtable sizes of ABI 1.0 and the callbacks each kind requires. */
static int check_vtable(const qd_plugin_desc *d, const char *origin, qd_error *err)
{
    const char *kn = qd_kind_name((int)d->kind);
    const uint32_t *size = d->vtable;
    if (!size)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: %s '%s' has no vtable", origin, kn, d->name);
    size_t need = 0;
    switch (d->kind) {
    case QD_KIND_ENCODER: need = sizeof(qd_encoder_vt); break;
    case QD_KIND_ANSATZ: need = sizeof(qd_ansatz_vt); break;
    case QD_KIND_OBSERVABLE: need = sizeof(qd_observable_vt); break;
    case QD_KIND_SIMULATOR: need = sizeof(qd_simulator_vt); break;
    case QD_KIND_DISTILLER: need = sizeof(qd_distiller_vt); break;
    case QD_KIND_DATASET: need = sizeof(qd_dataset_vt); break;
    default: break;
    }
    if (*size < need)
        return qd_error_set(err, QD_ERR_PLUGIN,
                            "%s: %s '%s' vtable is %u bytes, ABI %d.%d needs at least %zu",
                            origin, kn, d->name, *size, QD_ABI_MAJOR, QD_ABI_MINOR, need);
    const char *missing = NULL;
#define REQ(type, field) \
    if (!missing && !((const type *)d->vtable)->field) missing = #field
    switch (d->kind) {
    case QD_KIND_ENCODER:
        REQ(qd_encoder_vt, create); REQ(qd_encoder_vt, destroy); REQ(qd_encoder_vt, build);
        REQ(qd_encoder_vt, encode); REQ(qd_encoder_vt, encode_backward);
        break;
    case QD_KIND_ANSATZ:
        REQ(qd_ansatz_vt, create); REQ(qd_ansatz_vt, destroy); REQ(qd_ansatz_vt, build);
        REQ(qd_ansatz_vt, init_weights);
        break;
    case QD_KIND_OBSERVABLE:
        REQ(qd_observable_vt, create); REQ(qd_observable_vt, destroy); REQ(qd_observable_vt, build);
        REQ(qd_observable_vt, n_params); REQ(qd_observable_vt, init_params);
        REQ(qd_observable_vt, matrices); REQ(qd_observable_vt, matrices_backward);
        break;
    case QD_KIND_SIMULATOR:
        REQ(qd_simulator_vt, create); REQ(qd_simulator_vt, destroy); REQ(qd_simulator_vt, forward);
        REQ(qd_simulator_vt, backward); REQ(qd_simulator_vt, stats);
        break;
    case QD_KIND_DISTILLER:
        REQ(qd_distiller_vt, create); REQ(qd_distiller_vt, destroy); REQ(qd_distiller_vt, start);
        REQ(qd_distiller_vt, n_iterations); REQ(qd_distiller_vt, iterate);
        REQ(qd_distiller_vt, result); REQ(qd_distiller_vt, save); REQ(qd_distiller_vt, restore);
        break;
    case QD_KIND_DATASET:
        REQ(qd_dataset_vt, create); REQ(qd_dataset_vt, destroy); REQ(qd_dataset_vt, load);
        break;
    default:
        break;
    }
#undef REQ
    if (missing)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: %s '%s' lacks the required callback '%s'",
                            origin, kn, d->name, missing);
    return QD_OK;
}

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return 0;
    for (; *s; ++s)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static int check_params(const qd_plugin_desc *d, const char *origin, qd_error *err)
{
    if (!d->params)
        return QD_OK;
    for (size_t i = 0; d->params[i].name; ++i) {
        const qd_param *p = &d->params[i];
        if (i > 256)
            return qd_error_set(err, QD_ERR_PLUGIN, "%s: '%s' schema is not terminated", origin, d->name);
        if (p->type < QD_PARAM_BOOL || p->type > QD_PARAM_MAP)
            return qd_error_set(err, QD_ERR_PLUGIN, "%s: '%s' parameter '%s' has unknown type %u",
                                origin, d->name, p->name, p->type);
        if (p->type == QD_PARAM_ENUM && !p->choices)
            return qd_error_set(err, QD_ERR_PLUGIN, "%s: '%s' enum parameter '%s' lists no choices",
                                origin, d->name, p->name);
        if (strcmp(p->name, "plugin") == 0)
            return qd_error_set(err, QD_ERR_PLUGIN, "%s: '%s' may not declare the reserved key 'plugin'",
                                origin, d->name);
        for (size_t j = 0; j < i; ++j)
            if (strcmp(d->params[j].name, p->name) == 0)
                return qd_error_set(err, QD_ERR_PLUGIN, "%s: '%s' declares parameter '%s' twice",
                                    origin, d->name, p->name);
    }
    return QD_OK;
}

int qd_plugin_desc_check(const qd_plugin_desc *d, const char *origin, qd_error *err)
{
    if (!d)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: NULL descriptor", origin);
    if (QD_ABI_MAJOR_OF(d->abi_version) != QD_ABI_MAJOR)
        return qd_error_set(err, QD_ERR_PLUGIN,
                            "%s: built for plugin ABI %u.%u, this qdistill speaks ABI %d.x",
                            origin, d->abi_version >> 16, d->abi_version & 0xffffu, QD_ABI_MAJOR);
    if (d->struct_size < sizeof(qd_plugin_desc))
        return qd_error_set(err, QD_ERR_PLUGIN,
                            "%s: descriptor is %u bytes, ABI %d needs at least %zu",
                            origin, d->struct_size, QD_ABI_MAJOR, sizeof(qd_plugin_desc));
    if (!qd_kind_name((int)d->kind))
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: unknown plugin kind %u", origin, d->kind);
    if (!valid_name(d->name))
        return qd_error_set(err, QD_ERR_PLUGIN,
                            "%s: plugin name '%s' is not [a-z0-9_]{1,64}", origin,
                            d->name ? d->name : "(null)");
    if (!d->version || !d->summary)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: %s '%s' lacks a version or summary",
                            origin, qd_kind_name((int)d->kind), d->name);
    int rc = check_params(d, origin, err);
    if (rc)
        return rc;
    return check_vtable(d, origin, err);
}

static int push_entry(qd_registry *reg, const qd_plugin_desc *d, const char *origin,
                      const char *dir, qd_error *err)
{
    for (size_t i = 0; i < reg->n; ++i) {
        const entry *e = &reg->items[i];
        if (e->desc->kind != d->kind || strcmp(e->desc->name, d->name) != 0)
            continue;
        /* A plugin found earlier in the search order shadows later ones;
         * two of the same name from one place are a packaging error. */
        if (dir && e->dir && strcmp(dir, e->dir) != 0)
            return QD_OK;
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: duplicate %s plugin '%s' (already loaded from %s)",
                            origin, qd_kind_name((int)d->kind), d->name, e->origin);
    }
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? 2 * reg->cap : 32;
        entry *p = realloc(reg->items, cap * sizeof *p);
        if (!p)
            return qd_error_set(err, QD_ERR_NOMEM, "out of memory registering plugins");
        reg->items = p;
        reg->cap = cap;
    }
    entry *e = &reg->items[reg->n];
    e->desc = d;
    e->origin = strdup(origin);
    e->dir = dir ? strdup(dir) : NULL;
    if (!e->origin || (dir && !e->dir)) {
        free(e->origin);
        free(e->dir);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory registering plugins");
    }
    reg->n++;
    return QD_OK;
}

int qd_registry_add(qd_registry *reg, const qd_plugin_desc *desc, const char *origin,
                    qd_error *err)
{
    const char *o = origin ? origin : "<builtin>";
    int rc = qd_plugin_desc_check(desc, o, err);
    if (rc)
        return rc;
    return push_entry(reg, desc, o, NULL, err);
}

static int load_file_in(qd_registry *reg, const char *path, const char *dir, qd_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: cannot load plugin: file not found", path);
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        /* glibc starts the message with the path: name it once */
        size_t pl = strlen(path);
        if (why && strncmp(why, path, pl) == 0 && strncmp(why + pl, ": ", 2) == 0)
            why += pl + 2;
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: cannot load plugin: %s", path,
                            why ? why : "dlopen failed");
    }
    dlerror();
    void *sym = dlsym(h, QD_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        dlclose(h);
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: not a qdistill plugin (no '%s' symbol)",
                            path, QD_PLUGIN_ENTRY_SYMBOL);
    }
    qd_plugin_entry_fn fn;
    memcpy(&fn, &sym, sizeof fn);   /* object-to-function pointer, POSIX-sanctioned */
    const qd_plugin_desc *const *list = fn();
    if (!list) {
        dlclose(h);
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: %s() returned NULL", path,
                            QD_PLUGIN_ENTRY_SYMBOL);
    }
    /* Check everything before registering anything: a file is all or nothing. */
    size_t n = 0;
    for (; list[n]; ++n) {
        if (n >= 1024) {
            dlclose(h);
            return qd_error_set(err, QD_ERR_PLUGIN, "%s: descriptor list is not NULL-terminated", path);
        }
        int rc = qd_plugin_desc_check(list[n], path, err);
        if (rc) {
            dlclose(h);
            return rc;
        }
        for (size_t j = 0; j < n; ++j)
            if (list[j]->kind == list[n]->kind && strcmp(list[j]->name, list[n]->name) == 0) {
                /* format first: the strings live in the object we unload */
                qd_error_set(err, QD_ERR_PLUGIN, "%s: duplicate %s plugin '%s' in one file", path,
                             qd_kind_name((int)list[n]->kind), list[n]->name);
                dlclose(h);
                return QD_ERR_PLUGIN;
            }
    }
    if (n == 0) {
        dlclose(h);
        return qd_error_set(err, QD_ERR_PLUGIN, "%s: the plugin file declares no plugins", path);
    }
    size_t before = reg->n;
    for (size_t i = 0; i < n; ++i) {
        int rc = push_entry(reg, list[i], path, dir, err);
        if (rc) {
            while (reg->n > before) {
                reg->n--;
                free(reg->items[reg->n].origin);
                free(reg->items[reg->n].dir);
            }
            dlclose(h);
            return rc;
        }
    }
    if (reg->n == before) {     /* everything shadowed: no need to keep it */
        dlclose(h);
        return QD_OK;
    }
    if (reg->n_handles == reg->cap_handles) {
        size_t cap = reg->cap_handles ? 2 * reg->cap_handles : 16;
        void **p = realloc(reg->handles, cap * sizeof *p);
        if (!p)
            return qd_error_set(err, QD_ERR_NOMEM, "out of memory loading plugins");
        reg->handles = p;
        reg->cap_handles = cap;
    }
    reg->handles[reg->n_handles++] = h;
    return QD_OK;
}

int qd_registry_load_file(qd_registry *reg, const char *path, qd_error *err)
{
    return load_file_in(reg, path, NULL, err);
}

static void append_problem(char **problems, const char *msg)
{
    if (!problems)
        return;
    size_t old = *problems ? strlen(*problems) : 0;
    size_t add = strlen(msg);
    char *p = realloc(*problems, old + add + 2);
    if (!p)
        return;
    if (old)
        p[old++] = '\n';
    memcpy(p + old, msg, add + 1);
    *problems = p;
}

/* append_problem, and remember it in the registry's note. */
static void record_problem(qd_registry *reg, char **problems, const char *msg)
{
    append_problem(problems, msg);
    size_t at = strlen(reg->note_base);
    if (reg->n_problems++ < 3 && at < sizeof reg->note_base)
        snprintf(reg->note_base + at, sizeof reg->note_base - at, "%s%.230s",
                 at ? "; " : "; not loaded: ", msg);
    if (reg->n_problems > 3)
        snprintf(reg->note, sizeof reg->note, "%s; and %zu more", reg->note_base,
                 reg->n_problems - 3);
    else
        snprintf(reg->note, sizeof reg->note, "%s", reg->note_base);
}

const char *qd_registry_problem_note(const qd_registry *reg)
{
    return reg ? reg->note : "";
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_so_suffix(const char *name)
{
    size_t n = strlen(name);
    return n > 3 && strcmp(name + n - 3, ".so") == 0;
}

/* Collect *.so files in dir and, one level down, in its sub-folders (the
 * build tree keeps one folder per kind). */
static int collect(const char *dir, int depth, char ***files, size_t *n, size_t *cap)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        char *full = malloc(len);
        if (!full)
            break;
        snprintf(full, len, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(full, &st) != 0) {
            free(full);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (depth > 0)
                collect(full, depth - 1, files, n, cap);
            free(full);
        } else if (S_ISREG(st.st_mode) && has_so_suffix(de->d_name)) {
            if (*n == *cap) {
                size_t nc = *cap ? 2 * *cap : 32;
                char **p = realloc(*files, nc * sizeof *p);
                if (!p) {
                    free(full);
                    break;
                }
                *files = p;
                *cap = nc;
            }
            (*files)[(*n)++] = full;
        } else {
            free(full);
        }
    }
    closedir(d);
    return 0;
}

int qd_registry_load_dir(qd_registry *reg, const char *dir, char **problems, qd_error *err)
{
    char **files = NULL;
    size_t n = 0, cap = 0;
    if (collect(dir, 1, &files, &n, &cap) != 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot read plugin directory", dir);
    if (seen_dir(reg, dir)) {
        for (size_t i = 0; i < n; ++i)
            free(files[i]);
        free(files);
        return QD_OK;
    }
    qsort(files, n, sizeof *files, cmp_str);
    for (size_t i = 0; i < n; ++i) {
        qd_error e;
        qd_error_clear(&e);
        if (load_file_in(reg, files[i], dir, &e) != QD_OK)
            record_problem(reg, problems, e.msg);
        free(files[i]);
    }
    free(files);
    return QD_OK;
}

static int is_dir(const char *p)
{
    struct stat st;
    return p && *p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int qd_registry_load_default(qd_registry *reg, const char *const *extra_dirs, size_t n_extra,
                             char **problems, qd_error *err)
{
    for (size_t i = 0; i < n_extra; ++i) {
        if (!is_dir(extra_dirs[i]))
            return qd_error_set(err, QD_ERR_IO, "--plugin-path %s: not a directory", extra_dirs[i]);
        int rc = qd_registry_load_dir(reg, extra_dirs[i], problems, err);
        if (rc)
            return rc;
    }
    const char *env = getenv("QDISTILL_PLUGIN_PATH");
    if (env && *env) {
        char *copy = strdup(env);
        if (!copy)
            return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        char *save = NULL;
        for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
            if (is_dir(tok))
                qd_registry_load_dir(reg, tok, problems, NULL);
            else {
                char msg[600];
                snprintf(msg, sizeof msg, "QDISTILL_PLUGIN_PATH entry %.500s: not a directory", tok);
                record_problem(reg, problems, msg);
            }
        }
        free(copy);
    }
    if (is_dir(QD_BUILD_PLUGIN_DIR))
        qd_registry_load_dir(reg, QD_BUILD_PLUGIN_DIR, problems, NULL);
    if (is_dir(QD_INSTALL_PLUGIN_DIR))
        qd_registry_load_dir(reg, QD_INSTALL_PLUGIN_DIR, problems, NULL);
    return QD_OK;
}

size_t qd_registry_count(const qd_registry *reg)
{
    return reg ? reg->n : 0;
}

const qd_plugin_desc *qd_registry_at(const qd_registry *reg, size_t i, const char **origin)
{
    if (!reg || i >= reg->n)
        return NULL;
    if (origin)
        *origin = reg->items[i].origin;
    return reg->items[i].desc;
}

const qd_plugin_desc *qd_registry_find(const qd_registry *reg, int kind, const char *name)
{
    if (!reg || !name)
        return NULL;
    for (size_t i = 0; i < reg->n; ++i)
        if ((int)reg->items[i].desc->kind == kind && strcmp(reg->items[i].desc->name, name) == 0)
            return reg->items[i].desc;
    return NULL;
}

char *qd_registry_names(const qd_registry *reg, int kind)
{
    size_t len = 1;
    for (size_t i = 0; reg && i < reg->n; ++i)
        if ((int)reg->items[i].desc->kind == kind)
            len += strlen(reg->items[i].desc->name) + 2;
    char *s = malloc(len);
    if (!s)
        return NULL;
    s[0] = '\0';
    for (size_t i = 0; reg && i < reg->n; ++i)
        if ((int)reg->items[i].desc->kind == kind) {
            if (s[0])
                strcat(s, ", ");
            strcat(s, reg->items[i].desc->name);
        }
    return s;
}
