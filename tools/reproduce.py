"""Run a task's reproduction (the model and its baseline) and write its section of docs/RESULTS.md.

    python tools/reproduce.py --task sort_of_clevr --train      # train both runs, then report
    python tools/reproduce.py --task sort_of_clevr              # report from existing runs only

Every number in the section comes from the runs' metrics.json (written by tools/train.py); the learning curves
are drawn from their TensorBoard logs into docs/figures/. Each reported run's metrics.json and config.yaml are
archived under docs/runs/<run name>/, and a run whose directory is gone (runs/ is not versioned) is reported
from that archive, its learning curve kept as drawn.
"""

import json
import os
import subprocess
import sys

import _common  # noqa: F401
from absl import app, flags

from relation_networks import plots
from relation_networks.errors import UserError
from relation_networks.io import atomic_write_text, write_markdown_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join("docs", "runs")
_ARCHIVED = ("metrics.json", "config.yaml")
PREAMBLE = (
    "# Results\n\nEvery number below was written by `tools/reproduce.py` (or `tools/benchmark.py`) from the runs' "
    "`metrics.json` files; each section names the commands, hardware, seeds and training wall time.\n"
)
# The per-pair physics recipe of session 8 (g 4 x 256, Adam 3e-4 with warm-up and an 80-epoch cosine decay, the
# best model by validation); later rows add to it.
_SMALL_PAIRS = ["model.readout=pairs", "model.precise_first_layer=true", "model.g_units=[256,256,256,256]",
                "model.f_units=[256,64]", "train.learning_rate=3e-4", "train.lr_schedule=cosine",
                "train.warmup_steps=1000", "train.epochs=80", "train.keep_best=scenes_all_correct"]
# The counting recipe of session 10: the same small RN, augmented, on count labels only; a 50-epoch cosine decay.
_SMALL_COUNT = ["model.g_units=[256,256,256,256]", "model.f_units=[256,64]", "model.precise_first_layer=true",
                "train.learning_rate=3e-4", "train.lr_schedule=cosine", "train.warmup_steps=1000", "train.epochs=50",
                "train.keep_best=accuracy", "data.augment=true", "train.checkpoint_every_steps=1000",
                "train.time_limit_minutes=110"]


def _replacing(overrides, **values):
    """`overrides` (a list of "key=value" strings) with the value of each key named in `values` replaced, and any
    key not among them appended (a dot in a key is written as a double underscore: `train__epochs=48`)."""
    values = {key.replace("__", "."): value for key, value in values.items()}
    replaced = [f"{key}={values.pop(key)}" if key in values else f"{key}={value}"
                for key, value in (o.split("=", 1) for o in overrides)]
    return replaced + [f"{key}={value}" for key, value in values.items()]


# Session 21's counter (the session-10 context stage at Adam 1e-3, 56 epochs), then the same run stretched to 104
_LR_1E3_COUNT = [_replacing(_SMALL_COUNT, train__learning_rate="1e-3", train__epochs=epochs,
                            train__time_limit_minutes=minutes) + ["model.context_units=32"]
                 for epochs, minutes in ((56, 108), (104, 212))]


def _nth_farthest_overrides(num_vectors, vector_dim, minutes):
    """The nth-farthest recipe of sessions 19-21: one instance, the input MLP + input norm, Adam 3e-4, a time limit."""
    return [f"data.num_vectors={num_vectors}", f"data.vector_dim={vector_dim}", "model.input_mlp_units=[256,256]",
            "model.input_norm=true", "train.learning_rate=3e-4", f"train.time_limit_minutes={minutes}"]


def _nth_farthest_pair(num_vectors, vector_dim, run_prefix, minutes=100):
    """The RMC and the LSTM on one instance of nth-farthest with the same recipe and the same minutes of training
    each (the equal-time comparisons of sessions 19 and 20)."""
    overrides = _nth_farthest_overrides(num_vectors, vector_dim, minutes)
    return [("RMC", "configs/nth_farthest.yaml", f"runs/{run_prefix}_rmc_norm{minutes}", overrides),
            ("LSTM", "configs/nth_farthest_lstm.yaml", f"runs/{run_prefix}_lstm_norm{minutes}", overrides)]


_SIX_QKV = _nth_farthest_overrides(6, 2, 22) + ["model.qkv_norm=true"]
def _ids_8(num_vectors, vector_dim, minutes):
    """The recipe with ids 8 wide (`data.max_vectors=8`): a curriculum's stage, or (session 28) 4 vectors of 16 dims
    alone as in the curriculum's first stage."""
    return _nth_farthest_overrides(num_vectors, vector_dim, minutes) + ["data.max_vectors=8"]


def _curriculum(vector_dim):
    """A curriculum over the number of vectors in one run directory (ids 8 wide throughout), one stage each: 4
    vectors up to 30 minutes of training, 6 up to 60, 8 up to 100 -- the budget of session 20's 8 x 2 runs."""
    return [_ids_8(num_vectors, vector_dim, minutes) for num_vectors, minutes in ((4, 30), (6, 60), (8, 100))]


def _lstm296(curriculum):
    """The curriculum for the LSTM with the RMC's number of parameters (session 23): 296 units, and 150 epochs in
    the last stage because its steps are so fast that 100 would end before the last stage's minutes do."""
    return [stage + ["model.lstm_units=296"]
            for stage in curriculum[:-1] + [_replacing(curriculum[-1], train__epochs=150)]]


def _dimension_curriculum(*model_overrides):
    """Session 33: a curriculum over the dimension on 4 vectors in one run directory, every vector zero-padded to 16
    dims (`data.max_dim=16`) and the ids 8 wide throughout: 2 dims up to 25 minutes of training, 4 up to 55, 8 up
    to 85, 16 up to 120 (400 epochs, so that only the minutes end a stage). `model_overrides` end every stage."""
    return [_ids_8(4, vector_dim, minutes) + ["data.max_dim=16", "train.epochs=400", *model_overrides]
            for vector_dim, minutes in ((2, 25), (4, 55), (8, 85), (16, 120))]


# Session 22: the curriculum on 2 dims; session 27: on the paper's 16
_CURRICULUM = _curriculum(2)
_CURRICULUM_16 = _curriculum(16)
# copies of those run directories, resumed on 8 vectors up to 118 minutes of training
_CURRICULUM_118 = _CURRICULUM + [_replacing(_CURRICULUM[-1], train__time_limit_minutes=118)]


_BABI = ["train.time_limit_minutes=100", "train.keep_best=accuracy"]
# Session 24's better run: Adam 5e-4, warm-up and a cosine decay over 45,000 steps (100 minutes reach ~40,600)
_BABI_COSINE = _BABI + ["train.learning_rate=5e-4", "train.lr_schedule=cosine", "train.warmup_steps=500",
                        "train.epochs=18", "train.lr_schedule_steps=45000"]
# Sessions 24 and 25 ran before configs/babi.yaml's N(0, 1) word embeddings (session 26): Keras' uniform ones
_UNIFORM_WORDS = ["model.embedding_init=uniform"]


def _babi_restart(peak, words=_UNIFORM_WORDS):
    """Session 25: copies of the session-24 cosine run resumed to 200 minutes with the cosine stretched to 82,000
    steps and peak rate `peak` -- a warm restart (the rate jumps from ~0 to about half the peak at step 40,600).
    Sessions 26 and 28: the same restart of session 26's run with N(0, 1) words (`words=[]`, the config's own)."""
    first = _BABI_COSINE + words
    return [first, _replacing(first, train__learning_rate=peak, train__epochs=33, train__lr_schedule_steps=82000,
                              train__time_limit_minutes=200)]


# task -> (split to report, [(label, config, run directory[, --set overrides of that run])]); the overrides may also
# be a list of stages (lists of overrides), trained one after the other in the same run directory (each resumes
# the previous), e.g. a constant learning rate first and then a cosine decay from where it stopped.
REPRODUCTIONS = {
    # Session 18: the default config's CNN+RN, the README's command on both cores, 60 minutes. Session 17: the
    # CNN+MLP with the same CNN, 60 minutes on one core (TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 taskset
    # -c <core>), with the pixel coordinate planes that the default leaves off (docs/RESULTS.md, session 17).
    "sort_of_clevr": ("test", [("CNN+RN", "configs/sort_of_clevr.yaml", "runs/soc_rn_c24_g64_2core_decay"),
                               ("CNN+MLP", "configs/sort_of_clevr_mlp.yaml", "runs/soc_mlp_c24_g64_coords",
                                ["model.input_coordinates=true"])]),
    # Session 24: batches of similar story lengths with trimmed objects (configs/babi.yaml), 100 minutes on one
    # core each: the paper's Adam 2e-4, and 5e-4 with a cosine decay nearly over when the time limit stops it
    # (45,000 steps; 100 minutes reach ~40,600). Session 25: two copies of the second run resumed to 200 minutes.
    # Session 26: the two 100-minute recipes again with N(0, 1) word embeddings (now configs/babi.yaml's).
    # Sessions 26 and 28: a copy of the second of those resumed to 200 minutes (session 25's warm restart).
    "babi": ("val", [("RN, Adam 2e-4 (paper)", "configs/babi.yaml", "runs/babi_length50", _BABI + _UNIFORM_WORDS),
                     ("RN, Adam 5e-4, cosine", "configs/babi.yaml", "runs/babi_length50_cos5e-4",
                      _BABI_COSINE + _UNIFORM_WORDS),
                     ("RN, 200 min, peak 5e-4", "configs/babi.yaml", "runs/babi_cos5e-4_restart",
                      _babi_restart("5e-4")),
                     ("RN, 200 min, peak 2.5e-4", "configs/babi.yaml", "runs/babi_cos2.5e-4_restart",
                      _babi_restart("2.5e-4")),
                     ("RN, N(0,1) words, Adam 2e-4", "configs/babi.yaml", "runs/babi_normal", _BABI),
                     ("RN, N(0,1) words, 5e-4 cosine", "configs/babi.yaml", "runs/babi_normal_cos5e-4",
                      _BABI_COSINE),
                     ("RN, N(0,1) words, 200 min, peak 5e-4", "configs/babi.yaml", "runs/babi_normal_restart",
                      _babi_restart("5e-4", words=[]))]),
    "physics_connections": ("test", [
        ("RN, per-pair read-out, then cosine decay, best by validation", "configs/physics_connections.yaml",
         "runs/physics_connections_pairs_anneal",
         [["model.readout=pairs", "model.precise_first_layer=true", "train.max_steps=15000"],
          ["model.readout=pairs", "model.precise_first_layer=true", "train.epochs=28", "train.lr_schedule=cosine",
           "train.keep_best=scenes_all_correct", "train.time_limit_minutes=275"]]),
        ("RN, per-pair read-out, g 4 x 256, cosine, best by validation", "configs/physics_connections.yaml",
         "runs/physics_connections_pairs_small", _SMALL_PAIRS + ["train.time_limit_minutes=125"]),
        ("RN, per-pair read-out, g 4 x 256, cosine, augmented", "configs/physics_connections.yaml",
         "runs/physics_connections_pairs_small_augment",
         _SMALL_PAIRS + ["data.augment=true", "train.max_steps=69000"]),
        ("RN, paper read-out", "configs/physics_connections.yaml", "runs/physics_connections_precise",
         ["model.precise_first_layer=true", "train.time_limit_minutes=30"]),
        ("MLP", "configs/physics_connections_mlp.yaml", "runs/physics_connections_mlp",
         ["train.time_limit_minutes=16", "train.max_steps=39000"])]),
    "physics_count": ("test", [("RN", "configs/physics_count.yaml", "runs/physics_count", ["train.time_limit_minutes=83"]),
                               ("MLP", "configs/physics_count_mlp.yaml", "runs/physics_count_mlp",
                                ["train.max_steps=20000"])]),
    # Learned counting (session 10), one core per run.
    "physics_count_small": ("test", [
        # stopped after 24 of its 50 epochs to give the machine to the nth-farthest runs
        ("RN, g 4 x 256, augmented", "configs/physics_count.yaml", "runs/physics_count_small_augment",
         _SMALL_COUNT + ["train.max_steps=24000"]),
        # 50 epochs, then the cosine schedule stretched to 70 epochs from where it stopped (a second stage)
        ("RN + context stage, g 4 x 256, augmented", "configs/physics_count.yaml", "runs/physics_count_context_augment",
         [_SMALL_COUNT + ["model.context_units=32"],
          _replacing(_SMALL_COUNT, train__epochs=70) + ["model.context_units=32"]]),
        # Session 19: a wider context stage (g 256/256, 64-unit messages); 48 epochs fit ~2 hours on one core here
        ("RN + wider context stage, g 4 x 256, augmented", "configs/physics_count.yaml",
         "runs/physics_count_context64",
         _replacing(_SMALL_COUNT, train__epochs=48, train__time_limit_minutes=122)
         + ["model.context_units=64", "model.context_g_units=[256,256]"]),
        # Session 20: two context stages (g 128/128, 32-unit messages each), 48 epochs
        ("RN + two context stages, g 4 x 256, augmented", "configs/physics_count.yaml",
         "runs/physics_count_context2",
         _replacing(_SMALL_COUNT, train__epochs=48, train__time_limit_minutes=108)
         + ["model.context_units=32", "model.context_stages=2"]),
        # Session 21: the session-10 context stage at Adam 1e-3 instead of 3e-4, 56 epochs
        ("RN + context stage, Adam 1e-3, g 4 x 256, augmented", "configs/physics_count.yaml",
         "runs/physics_count_context_lr1e-3",
         _LR_1E3_COUNT[0]),
        # Session 23: a copy of that run resumed with its cosine schedule stretched to 104 epochs (a warm restart)
        ("RN + context stage, Adam 1e-3, 104 epochs", "configs/physics_count.yaml",
         "runs/physics_count_context_lr1e-3_104", _LR_1E3_COUNT)]),
    # Session 29: per-pair link logits counted by a fixed read-out (model.readout=components), count labels only;
    # one core per run, side by side (mixed bfloat16: this machine has AVX512-BF16)
    "physics_count_components": ("test", [
        ("RN, components read-out, Adam 3e-4, 60 epochs", "configs/physics_count_components.yaml",
         "runs/physics_count_components",
         ["train.learning_rate=3e-4", "train.epochs=60", "train.time_limit_minutes=95"]),
        # stopped by hand after epoch 24 of 60 and resumed with the cosine schedule stretched to 80 epochs
        ("RN, components read-out, Adam 1e-3, 80 epochs", "configs/physics_count_components.yaml",
         "runs/physics_count_components_lr1e-3",
         [["train.epochs=60", "train.time_limit_minutes=95"], ["train.epochs=80", "train.time_limit_minutes=110"]]),
        # Session 30, an Intel Xeon (AVX512-BF16 slower than float32 there), both cores: started for 110 epochs and
        # stopped after epoch 6 (tests and probes had slowed it), resumed for 100 and stopped after epoch 8 (it ran
        # faster alone), resumed for 120 and stopped after epoch 18 (the speed had settled: 120 would not end within
        # the session), resumed for 100; the directory renamed before each resume
        ("RN, components read-out, Adam 1e-3, 100 epochs, float32", "configs/physics_count_components.yaml",
         "runs/physics_count_components_100",
         [["train.epochs=110", "train.precision=float32", "train.time_limit_minutes=118"],
          ["train.epochs=100", "train.precision=float32", "train.time_limit_minutes=115"],
          ["train.epochs=120", "train.precision=float32", "train.time_limit_minutes=125"],
          ["train.epochs=100", "train.precision=float32", "train.time_limit_minutes=110"]]),
        # Session 31, the same Xeon: a second seed of the 100-epoch recipe, stopped after epoch 33 (the unit tests had
        # slowed it, so its first time limit would have ended it before epoch 100) and resumed with a longer one;
        # trained when the config decayed over 100 epochs, which the overrides now state
        ("RN, components read-out, Adam 1e-3, 100 epochs, float32, seed 1", "configs/physics_count_components.yaml",
         "runs/physics_count_components_100_seed1",
         [["seed=1", "train.epochs=100", "train.precision=float32", "train.time_limit_minutes=118"],
          ["seed=1", "train.epochs=100", "train.precision=float32", "train.time_limit_minutes=160"]]),
        # Session 32, the same Xeon: the decay stretched to 120 epochs, seed 0, in one go (two exploratory one-core
        # Nth-farthest runs beside it at nice 19)
        ("RN, components read-out, Adam 1e-3, 120 epochs, float32", "configs/physics_count_components.yaml",
         "runs/physics_count_components_120",
         ["train.epochs=120", "train.precision=float32", "train.time_limit_minutes=152"])]),
    "nth_farthest": ("test", [("RMC", "configs/nth_farthest.yaml", "runs/nth_farthest"),
                              ("LSTM", "configs/nth_farthest_lstm.yaml", "runs/nth_farthest_lstm"),
                              ("RN (all vectors at once)", "configs/nth_farthest.yaml", "runs/nth_farthest_rn",
                               ["model.type=rn", "train.time_limit_minutes=15"])]),
    # Session 19: 4 vectors of 2 dims, input MLP + input norm, Adam 3e-4, 100 minutes each, side by side on one core
    "nth_farthest_4x2": ("test", _nth_farthest_pair(4, 2, "nf4d2")),
    # Session 20: 8 vectors of 2 dims, the same recipe and budget; then 6 vectors, 22 minutes each on a core of its own
    "nth_farthest_8x2": ("test", _nth_farthest_pair(8, 2, "nf8d2")),
    "nth_farthest_6x2": ("test", _nth_farthest_pair(6, 2, "nf6d2", minutes=22)),
    # Session 21: the RMC with Sonnet's layer norm of the projected queries, keys and values (model.qkv_norm), on a
    # core of its own, beside session 20's LSTM of the same recipe; the 95-minute run continues the 22-minute one.
    "nth_farthest_6x2_qkv_norm": ("test", [
        ("RMC + qkv norm", "configs/nth_farthest.yaml", "runs/nf6d2_rmc_qkvnorm22", _SIX_QKV),
        ("RMC + qkv norm, Adam 1e-4", "configs/nth_farthest.yaml", "runs/nf6d2_rmc_qkvnorm_lr1e-4_22",
         _replacing(_SIX_QKV, train__learning_rate="1e-4")),
        ("RMC + qkv norm, 95 minutes", "configs/nth_farthest.yaml", "runs/nf6d2_rmc_qkvnorm95",
         [_SIX_QKV, _replacing(_SIX_QKV, train__time_limit_minutes=95)]),
        ("LSTM (session 20)", "configs/nth_farthest_lstm.yaml", "runs/nf6d2_lstm_norm22",
         _nth_farthest_overrides(6, 2, 22))]),
    # Session 22: both models through the curriculum, each alone on a core; session 20's 8 x 2 runs without it beside.
    "nth_farthest_curriculum": ("test", [
        ("RMC, curriculum 4 -> 6 -> 8", "configs/nth_farthest.yaml", "runs/nf_curriculum_rmc", _CURRICULUM),
        ("LSTM, curriculum 4 -> 6 -> 8", "configs/nth_farthest_lstm.yaml", "runs/nf_curriculum_lstm", _CURRICULUM),
        ("RMC, curriculum, 118 min", "configs/nth_farthest.yaml", "runs/nf_curriculum_rmc118", _CURRICULUM_118),
        ("LSTM, curriculum, 118 min", "configs/nth_farthest_lstm.yaml", "runs/nf_curriculum_lstm118", _CURRICULUM_118),
        # Session 23: an LSTM with the RMC's number of parameters (296 units: 655k in the core, the RMC's 659k)
        ("LSTM, 296 units, curriculum 4 -> 6 -> 8", "configs/nth_farthest_lstm.yaml", "runs/nf_curriculum_lstm296",
         _lstm296(_CURRICULUM)),
        *[(f"{label}, no curriculum", *rest) for label, *rest in _nth_farthest_pair(8, 2, "nf8d2")]]),
    # Session 27: the same curriculum on the paper's 16 dimensions, the RMC and the LSTM-296 each alone on a core
    "nth_farthest_curriculum16": ("test", [
        ("RMC, curriculum 4 -> 6 -> 8, 16 dims", "configs/nth_farthest.yaml", "runs/nf16_curriculum_rmc",
         _CURRICULUM_16),
        ("LSTM, 296 units, curriculum, 16 dims", "configs/nth_farthest_lstm.yaml", "runs/nf16_curriculum_lstm296",
         _lstm296(_CURRICULUM_16))]),
    "nth_farthest_4x16": ("test", [
        # Session 28: the RMC for 120 minutes; the LSTM-296 for 31, stopped on its plateau
        ("RMC, 120 minutes", "configs/nth_farthest.yaml", "runs/nf16x4_rmc120", _ids_8(4, 16, 120)),
        ("LSTM, 296 units, 31 minutes", "configs/nth_farthest_lstm.yaml", "runs/nf16x4_lstm296_31",
         _ids_8(4, 16, 31) + ["model.lstm_units=296", "train.epochs=300"])]),
    # Session 33: 4 vectors, the dimension growing 2 -> 4 -> 8 -> 16; the RMC and the LSTM-296 each alone on a core
    "nth_farthest_dim_curriculum": ("test", [
        ("RMC, dims 2 -> 4 -> 8 -> 16", "configs/nth_farthest.yaml", "runs/nf_dimcurr16_rmc",
         _dimension_curriculum()),
        ("LSTM, 296 units, dims 2 -> 4 -> 8 -> 16", "configs/nth_farthest_lstm.yaml", "runs/nf_dimcurr16_lstm296",
         _dimension_curriculum("model.lstm_units=296"))]),
    # Session 34: the same curriculum for two smaller RMCs with 2 heads, whose steps cost less (4 slots x 2 heads x 32
    # runs about as many steps a second as the LSTM-296), each alone on a core; session 33's LSTM-296 beside them
    "nth_farthest_dim_curriculum_small": ("test", [
        ("RMC, 4 slots x 2 heads x 32", "configs/nth_farthest.yaml", "runs/nf_dimcurr16_rmc4x2x32",
         _dimension_curriculum("model.head_size=32", "model.num_heads=2")),
        ("RMC, 4 slots x 2 heads x 64", "configs/nth_farthest.yaml", "runs/nf_dimcurr16_rmc4x2x64",
         _dimension_curriculum("model.num_heads=2")),
        ("LSTM, 296 units (session 33)", "configs/nth_farthest_lstm.yaml", "runs/nf_dimcurr16_lstm296",
         _dimension_curriculum("model.lstm_units=296"))]),
}

# Reproductions that compare runs by wall-clock time (an equal budget, a longer one for the model behind, or a run
# continued for longer): their section also plots every run's validation accuracy against its minutes of training.
EQUAL_TIME = {"nth_farthest_4x2", "nth_farthest_8x2", "nth_farthest_6x2", "nth_farthest_6x2_qkv_norm",
              "nth_farthest_curriculum", "nth_farthest_curriculum16", "nth_farthest_4x16",
              "nth_farthest_dim_curriculum", "nth_farthest_dim_curriculum_small", "babi"}


FLAGS = flags.FLAGS
flags.DEFINE_string("task", None, "Which reproduction: " + ", ".join(sorted(REPRODUCTIONS)))
flags.DEFINE_bool("train", False, "Train the runs first (resuming any that exist).")
flags.DEFINE_string("split", None, "Split to report (default: the task's).")
flags.DEFINE_string("results", "docs/RESULTS.md", "Results file whose section for the task is (re)written.")
flags.DEFINE_multi_string("set", [], "Extra --set overrides passed to every training run.")
flags.mark_flag_as_required("task")


def _pct(value):
    return "" if value is None else f"{100 * value:.1f}"


def _completion(metrics):
    """The "complete" cell: whether the run trained its whole schedule, and if not what stopped it."""
    if metrics["step"] >= metrics["total_steps"]:
        return "yes"
    # The trainer calls a run complete when it reached the step the command asked for, e.g. train.max_steps.
    return "no (train.max_steps)" if metrics["complete"] else f"no ({metrics.get('stopped')})"


def section(task, split, runs):
    """Markdown for one task from `[(label, config, run_dir, metrics)]`."""
    reports = [(label, m["evaluation"].get(split)) for label, _, _, m in runs]
    reports = [(label, r) for label, r in reports if r]
    if not reports:
        raise UserError(f"No {split} evaluation in the runs of {task}: train them first (--train).")
    rows = []
    for name in list(reports[0][1]["groups"]) + list(reports[0][1]["metrics"]):
        cells = []
        for _, r in reports:
            value = r["groups"].get(name, {}).get("accuracy") if name in r["groups"] else r["metrics"].get(name)
            cells.append(_pct(value))
        paper = reports[0][1]["paper"].get(name)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(paper)} |")
    for key in ("passed",):
        if key in reports[0][1]["extra"]:
            rows.append("| tasks passed (> 95%) | " + " | ".join(str(r["extra"][key]) for _, r in reports)
                        + f" | {reports[0][1]['extra'].get('paper_passed', '')} |")
    header = "| % | " + " | ".join(label for label, _ in reports) + " | paper |\n|---|" + "---|" * (len(reports) + 1)
    info = ["| run | config | steps | epochs | training wall time | complete | seed | command |", "|---|---|---|---|---|---|---|---|"]
    figures = []
    for label, config, run_dir, m in runs:
        minutes = m["train_seconds"] / 60
        info.append(f"| {label} | `{config}` | {m['step']:,} / {m['total_steps']:,} | {m['epochs_completed']} | "
                    f"{minutes:.1f} min | {_completion(m)} | "
                    f"{m['seed']} | `{'python ' + m['command'] if m.get('command') else ' '.join(_train_command(config, run_dir, []))}` |")
        figure = os.path.join("docs", "figures", f"{os.path.basename(run_dir)}.png")
        source = _source(run_dir)
        if source == os.path.join(ROOT, run_dir) or not os.path.exists(os.path.join(ROOT, figure)):
            plots.learning_curve(source, os.path.join(ROOT, figure), m["history"], f"{task}: {label}")
        figures.append(f"![{label} learning curve](figures/{os.path.basename(figure)})")
    if task in EQUAL_TIME:
        figure = os.path.join("docs", "figures", f"{task}_by_time.png")
        plots.validation_by_time(os.path.join(ROOT, figure), [(label, m["history"]) for label, _, _, m in runs],
                                 f"{task}: validation accuracy against minutes of training")
        figures.insert(0, f"![validation accuracy against minutes of training](figures/{os.path.basename(figure)})")
    drift = [f"- {label}: trained with {differences}" for label, config, run_dir, _ in runs
             if (differences := _config_drift(config, run_dir))]
    if drift:
        info += ["", "Runs whose saved `config.yaml` differs from the config file as it is now:", *drift]
    staged = [f"- {label}: " + "; then ".join(f"`{' '.join(_train_command(config, run_dir, stage))}`" for stage in stages)
              for label, config, run_dir, _ in runs if len(stages := _stages(task, label)) > 1]
    if staged:
        info += ["", "Runs trained in stages (one run directory; each command resumes where the previous stopped, "
                 "the table shows the last):", *staged]
    best = [f"- {label}: the model of epoch {m['best']['epoch']} (step {m['best']['step']:,}), best validation "
            f"{m['best']['metric']} {_pct(m['best']['value'])}% (`train.keep_best`)" for label, _, _, m in runs
            if m.get("best")]
    if best:
        info += ["", "Evaluated models kept by validation rather than the last:", *best]
    return (
        f"Split: `{split}` ({reports[0][1]['examples']:,} examples). Hardware: {_hardware_line(runs)}.\n\n"
        f"{header}\n" + "\n".join(rows) + "\n\n" + "\n".join(info) + "\n\n" + "\n".join(figures) + "\n\n"
        f"Regenerate: `python tools/reproduce.py --task {task}` (add `--train` to train the runs first).\n"
    )


def _hardware_line(runs):
    """The machine the runs trained on; where they differ, each machine with the runs trained on it."""
    from relation_networks.training import hardware_text

    machines = {}
    for label, _, _, m in runs:
        machines.setdefault(hardware_text(m["hardware"]), []).append(label)
    if len(machines) == 1:
        return next(iter(machines))
    return "; ".join(f"{text} ({', '.join(repr(label) for label in labels)})" for text, labels in machines.items())


def _archive_dir(run_dir):
    return os.path.join(ROOT, ARCHIVE, os.path.basename(os.path.normpath(run_dir)))


def _source(run_dir):
    """Where a run's metrics.json and config.yaml are read: its directory while that holds them, else the archive."""
    directory = os.path.join(ROOT, run_dir)
    return directory if os.path.exists(os.path.join(directory, "metrics.json")) else _archive_dir(run_dir)


def _archive(run_dir):
    """Copy a run's metrics.json and config.yaml to docs/runs/<run name>/ (each written atomically)."""
    for name in _ARCHIVED:
        path = os.path.join(ROOT, run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                atomic_write_text(os.path.join(_archive_dir(run_dir), name), f.read())


def _stages(task, label):
    """The --set override lists of a run's training stages (one stage for most runs)."""
    for spec_label, _, _, *overrides in REPRODUCTIONS[task][1]:
        if spec_label == label:
            overrides = overrides[0] if overrides else []
            return overrides if overrides and isinstance(overrides[0], list) else [overrides]
    return [[]]


def _train_command(config, run_dir, overrides):
    command = ["python", "tools/train.py", "--config", config]
    for override in overrides:
        command += ["--set", override]
    return command + ["--run_dir", run_dir]


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_drift(config_file, run_dir):
    """`key=run value (file: current value)` for every setting in which a run's saved config differs from the
    config file now (the run's overrides, or a file edited since), or "" when they agree."""
    from relation_networks import config as config_lib

    saved = os.path.join(_source(run_dir), "config.yaml")
    if not os.path.exists(saved):
        return ""
    import yaml

    with open(saved) as f:
        written = _flatten(yaml.safe_load(f) or {})  # every setting that existed when the run was trained
    run = _flatten(config_lib.to_dict(config_lib.load(saved)))
    now = _flatten(config_lib.to_dict(config_lib.load(os.path.join(ROOT, config_file))))
    keys = sorted(k for k in set(run) | set(now) if k != "run_dir" and (run.get(k) != now.get(k) or k not in written))
    return ", ".join(
        f"`{k}={run.get(k)}` (file: `{now.get(k)}`)" if k in written
        else f"`{k}` added after this run (its default, `{run.get(k)}`, is how it ran; file: `{now.get(k)}`)"
        for k in keys
    )


@_common.main_wrapper
def main(argv):
    del argv
    if FLAGS.task not in REPRODUCTIONS:
        raise UserError(f"Unknown reproduction {FLAGS.task!r}; known: {', '.join(sorted(REPRODUCTIONS))}.")
    split, specs = REPRODUCTIONS[FLAGS.task]
    split = FLAGS.split or split
    runs = []
    for label, config, run_dir, *_ in specs:
        for stage in _stages(FLAGS.task, label) if FLAGS.train else []:
            command = [sys.executable] + _train_command(config, run_dir, stage + FLAGS.set)[1:]
            print("+", " ".join(command), flush=True)
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                raise UserError(f"Training {label} failed; see its output above.")
        if os.path.exists(os.path.join(ROOT, run_dir, "metrics.json")):
            _archive(run_dir)
        metrics_path = os.path.join(_source(run_dir), "metrics.json")
        if not os.path.exists(metrics_path):
            print(f"skipping {label}: no {os.path.join(run_dir, 'metrics.json')} (nor an archived copy)", file=sys.stderr)
            continue
        with open(metrics_path) as f:
            runs.append((label, config, run_dir, json.load(f)))
    if not runs:
        raise UserError(f"No finished runs for {FLAGS.task}; train them with --train.")
    write_markdown_section(os.path.join(ROOT, FLAGS.results), FLAGS.task, FLAGS.task, section(FLAGS.task, split, runs),
                           preamble=PREAMBLE)
    print(f"wrote the {FLAGS.task} section of {FLAGS.results}")


if __name__ == "__main__":
    app.run(main)
