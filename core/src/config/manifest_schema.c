/* The core manifest schemas: top level, dataset core keys, train and
 * evaluate. docs/manifest.md is generated from these tables. */
#include "config_internal.h"
#include "qdistill/manifest.h"

#define END {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}
#define MIN QD_PARAM_HAS_MIN
#define MAX QD_PARAM_HAS_MAX

static const qd_param top_schema[] = {
    {"name", QD_PARAM_STRING, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "experiment name (names the run directory and reports)"},
    {"seed", QD_PARAM_INT, MIN, "1", 0, 0, NULL, 0, NULL,
     "master random seed; every component draws from its own stream derived from it"},
    {"threads", QD_PARAM_INT, MIN | MAX, "0", 0, 4096, NULL, 0, NULL,
     "threads to use (0 = all cores); results are deterministic for a given seed and "
     "thread count"},
    {"dataset", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "dataset plugin section {plugin: NAME, ...} plus the dataset core keys"},
    {"model", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "the model: {layers: [...]} or {file: models/NAME.yaml}"},
    {"encoder", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "merged over the encoder section of every quantum layer"},
    {"ansatz", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "merged over the ansatz section of every quantum layer"},
    {"observable", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "merged over the observable section of every quantum layer"},
    {"simulator", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "merged over the simulator section of every quantum layer"},
    {"train", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "full-data training (keys below)"},
    {"distill", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "distiller plugin section {plugin: NAME, ...}"},
    {"evaluate", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "evaluation protocol for distilled sets (keys below)"},
    {"sweep", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL,
     "ablation grid {grid: {key.path: [values] | \"a,b\" | \"range(1, 4)\"}}, checked by qdistill sweep (docs/sweeps.md)"},
    END};

/* subset/test_subset/validation take a count or a fraction in (0, 1) (see
 * dataload.h); the manifest checks the "integer or fraction" rule on top of
 * the schema's >= 0. */
static const qd_param dataset_core_schema[] = {
    {"subset", QD_PARAM_DOUBLE, MIN, "0", 0, 0, NULL, 0, NULL,
     "keep this many training samples, class-stratified (a value in (0, 1) is a "
     "fraction; 0 = all)"},
    {"test_subset", QD_PARAM_DOUBLE, MIN, "0", 0, 0, NULL, 0, NULL,
     "keep this many test samples, class-stratified, the same for every seed (a value "
     "in (0, 1) is a fraction; 0 = all)"},
    {"validation", QD_PARAM_DOUBLE, MIN, "0", 0, 0, NULL, 0, NULL,
     "hold out this many training samples for model selection and learning-rate tuning "
     "(a value in (0, 1) is a fraction; 0 = none)"},
    END};

/* lr must be > 0, which flags cannot say: the manifest checks it. */
static const qd_param train_schema[] = {
    {"optimizer", QD_PARAM_ENUM, 0, "sgd", 0, 0, "sgd|adam", 0, NULL, "optimizer"},
    {"lr", QD_PARAM_DOUBLE, 0, "0.01", 0, 0, NULL, 0, NULL, "learning rate (> 0)"},
    {"momentum", QD_PARAM_DOUBLE, MIN | MAX, "0.9", 0, 1, NULL, 0, NULL,
     "SGD momentum (adam: beta1)"},
    {"weight_decay", QD_PARAM_DOUBLE, MIN, "0", 0, 0, NULL, 0, NULL,
     "L2 penalty coefficient"},
    {"epochs", QD_PARAM_INT, MIN, "10", 1, 0, NULL, 0, NULL, "passes over the training set"},
    {"batch_size", QD_PARAM_INT, MIN, "64", 1, 0, NULL, 0, NULL, "mini-batch size"},
    {"lr_decay_every", QD_PARAM_INT, MIN, "0", 0, 0, NULL, 0, NULL,
     "multiply lr by lr_decay_factor every this many epochs (0 = never)"},
    {"lr_decay_factor", QD_PARAM_DOUBLE, MIN | MAX, "0.5", 0, 1, NULL, 0, NULL,
     "learning-rate decay factor"},
    {"clip_grad", QD_PARAM_DOUBLE, MIN, "0", 0, 0, NULL, 0, NULL,
     "clip the gradient's global L2 norm to this (0 = off)"},
    {"eval_batch_size", QD_PARAM_INT, MIN, "1000", 1, 0, NULL, 0, NULL,
     "batch size when scoring the test set"},
    {"save_trajectory", QD_PARAM_BOOL, 0, "false", 0, 0, NULL, 0, NULL,
     "write trajectory.npy (epochs+1 x parameters: the initial parameters and those after "
     "every epoch), an expert trajectory for trajectory_matching's expert_dir"},
    END};

static const qd_param evaluate_schema[] = {
    {"models", QD_PARAM_INT, MIN, "10", 1, 0, NULL, 0, NULL,
     "fresh models trained on the distilled set (mean +- std over them)"},
    {"init", QD_PARAM_ENUM, 0, "fixed", 0, 0, "fixed|random", 0, NULL,
     "fixed: the one initialisation distillation used; random: a new one per model (stream evaluate.init.<i>)"},
    {"batch_size", QD_PARAM_INT, MIN, "1000", 1, 0, NULL, 0, NULL,
     "batch size for test evaluation"},
    {"baselines", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL,
     "also train on a random real subset of the same size and on the full data"},
    {"lr_grid", QD_PARAM_LIST, MIN, "[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3]", 1, 0, NULL,
     QD_PARAM_DOUBLE, NULL,
     "constant learning rates tried for the random-subset baseline and for sets without learned step sizes (selection and matching methods), each picked by accuracy on the dataset's validation split"},
    {"tune_models", QD_PARAM_INT, MIN, "2", 1, 0, NULL, 0, NULL,
     "models per lr_grid candidate when picking the baseline's learning rate"},
    {"recipe_epochs", QD_PARAM_INT, MIN, "300", 1, 0, NULL, 0, NULL,
     "epochs of minibatch SGD for sets without learned step sizes (and baselines)"},
    {"recipe_batch", QD_PARAM_INT, MIN, "256", 1, 0, NULL, 0, NULL,
     "batch size of that recipe"},
    {"full_data", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL,
     "result.json of a `qdistill train` run (relative to the manifest) for the "
     "full-data row"},
    END};

const qd_param *qd_manifest_top_schema(void)
{
    return top_schema;
}

const qd_param *qd_dataset_core_schema(void)
{
    return dataset_core_schema;
}

const qd_param *qd_train_schema(void)
{
    return train_schema;
}

const qd_param *qd_evaluate_schema(void)
{
    return evaluate_schema;
}
