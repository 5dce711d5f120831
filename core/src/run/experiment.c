/* Opening an experiment: threads, data, model. */
#include <omp.h>
#include <string.h>
#include <unistd.h>

#include "qdistill/experiment.h"
#include "qdistill/log.h"

extern void openblas_set_num_threads(int);

int qd_set_threads(int threads)
{
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    return threads;
}

int qd_experiment_open(qd_experiment *x, const qd_manifest *m, const qd_registry *reg,
                       const qd_experiment_opts *opts, qd_error *err)
{
    memset(x, 0, sizeof *x);
    qd_experiment_opts o = {.load_data = 1};
    if (opts)
        o = *opts;
    x->manifest = m;
    x->reg = reg;
    x->seed = qd_manifest_seed(m);
    x->stop = o.stop;
    x->threads = qd_set_threads(o.threads ? o.threads : qd_manifest_threads(m));

    if (o.load_data) {
        const qd_node *ds = qd_manifest_section(m, "dataset");
        if (!ds) {
            qd_error_set(err, QD_ERR_MANIFEST, "%s: the manifest has no 'dataset' section",
                         qd_manifest_path(m));
            return QD_ERR_MANIFEST;
        }
        qd_instance_opts io = {.seed = x->seed, .stream = "dataset", .threads = x->threads,
                               .base_dir = qd_manifest_dir(m), .stop_flag = o.stop};
        int rc = qd_data_load(reg, ds, &io, &x->data, err);
        if (rc)
            return rc;
        qd_log(QD_LOG_INFO, "%s", x->data.summary);
        x->channels = x->data.train.channels;
        x->height = x->data.train.height;
        x->width = x->data.train.width;
        x->classes = x->data.train.classes;
    }
    if (o.channels) {
        x->channels = o.channels;
        x->height = o.height;
        x->width = o.width;
        x->classes = o.classes;
    }
    const qd_node *ms = qd_manifest_section(m, "model");
    if (!ms) {
        qd_experiment_close(x);
        return qd_error_set(err, QD_ERR_MANIFEST, "%s: the manifest has no 'model' section",
                            qd_manifest_path(m));
    }
    qd_model_opts mo = {.channels = x->channels, .height = x->height, .width = x->width,
                        .classes = x->classes, .seed = x->seed, .threads = x->threads,
                        .base_dir = qd_manifest_dir(m), .stop_flag = o.stop};
    int rc = qd_model_create(ms, reg, &mo, &x->model, err);
    if (rc) {
        qd_experiment_close(x);
        return rc;
    }
    return QD_OK;
}

void qd_experiment_close(qd_experiment *x)
{
    if (!x)
        return;
    qd_model_destroy(x->model);
    qd_data_bundle_free(&x->data);
    memset(x, 0, sizeof *x);
}
