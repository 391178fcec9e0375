"""The default configuration: every key the package reads, with its meaning, unit and constraints.

Key names follow lufficc/SSD where a key exists there, so its YAML files and command-line overrides
(`python train.py --config-file X.yaml SOLVER.LR 1e-3`) work unchanged. Keys that lufficc/SSD does not
have are marked "(new)".

Each key is documented by the comment block directly above it; `tools/gen_config_docs.py` turns these
comments into `docs/config.md`, so a comment here is the documentation. Format of a comment block:
first line the meaning, then `unit:`, `constraint:` where they apply.

Use `get_cfg()` for a fresh, mutable copy; `ssd.config.cfg` is the lufficc-style global.
Config values are read only in `build_*` functions (STYLE.md rule 5): model classes never see a cfg.
"""

from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------------
# MODEL: the detector
# ---------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Name of the detector class; only "SSDDetector" exists (kept for lufficc/SSD YAML compatibility).
_C.MODEL.META_ARCHITECTURE = "SSDDetector"
# Device to run on: "auto" (cuda if available, else cpu), "cuda", "cuda:1" or "cpu".
# constraint: lufficc/SSD defaults to "cuda"; here "auto" so the same command runs on a laptop.
_C.MODEL.DEVICE = "auto"
# Number of classes including background (label 0). VOC: 21, COCO: 81.
# constraint: >= 2; must equal len(class names) + 1 of the training dataset.
_C.MODEL.NUM_CLASSES = 21
# IoU above which a prior is matched to a ground-truth box (SSD paper sec. 2.2, "jaccard overlap > 0.5").
# unit: IoU in [0, 1].
_C.MODEL.THRESHOLD = 0.5
# Hard negative mining: at most this many negatives per positive, per image (SSD paper sec. 2.2: 3:1).
_C.MODEL.NEG_POS_RATIO = 3
# Variance of the centre offsets in box encoding (the Caffe SSD "variance" 0.1).
_C.MODEL.CENTER_VARIANCE = 0.1
# Variance of the log size offsets in box encoding (the Caffe SSD "variance" 0.2).
_C.MODEL.SIZE_VARIANCE = 0.2
# (new) Checkpoint to initialise from before training (fine-tuning): a path, URL or model-zoo name
# (see ssd/modeling/model_zoo.py).
# Heads whose shape differs (another class count) are skipped and reported. Empty = none.
_C.MODEL.WEIGHTS = ""

_C.MODEL.BACKBONE = CN()
# Registered backbone name: "vgg", "mobilenet_v2" or "mobilenet_v3" (see ssd/modeling/backbone/).
_C.MODEL.BACKBONE.NAME = "vgg"
# Channels of each feature map the backbone emits, one per prior level.
# constraint: must match what the backbone produces; same length as MODEL.PRIORS.FEATURE_MAPS.
_C.MODEL.BACKBONE.OUT_CHANNELS = (512, 1024, 512, 256, 256, 256)
# Load ImageNet weights for the backbone through the torch hub cache ($TORCH_HOME/hub/checkpoints).
_C.MODEL.BACKBONE.PRETRAINED = True
# (new) Width multiplier of the MobileNet backbones (1.0 = the published network); must be 1.0 for "vgg".
# constraint: > 0; pretrained ImageNet weights exist only for 1.0.
_C.MODEL.BACKBONE.WIDTH_MULT = 1.0
# (new) MobileNet backbones: also emit the output of the last stride-8 block (MobileNetV2 features[6],
# 32 channels; MobileNetV3 features[6], 40 channels) as the first feature map, for objects too small for
# the stride-16 map's priors (see configs/mobilenet_v2_ssd320_bccd.yaml). Adds a level: OUT_CHANNELS and
# MODEL.PRIORS.* then need 7 entries.
_C.MODEL.BACKBONE.STRIDE8_MAP = False
# (new) Which stride-8 map STRIDE8_MAP adds: "block", the output of the last stride-8 block (above), or
# "expansion", the 1x1 expansion of the first stride-16 block, computed at stride 8 before its stride-2
# depthwise conv (MobileNetV2 192 channels, MobileNetV3 240; pretrained, no extra backbone compute), where
# torchvision's SSDLite taps its stride-16 level. OUT_CHANNELS[0] is then that width.
# constraint: "block" or "expansion".
_C.MODEL.BACKBONE.STRIDE8_SOURCE = "block"
# (new) Fine-tuning: the layers of the ImageNet trunk whose output stride is <= this keep their pretrained
# weights and BatchNorm statistics (no gradient, no backward pass through them). 4 freezes the stem and the
# stride-4 blocks (as Detectron2's FREEZE_AT 2), which makes each training step cheaper; whether it costs
# accuracy depends on how far your images are from ImageNet's (compare over seeds with tools/seed_runs.py).
# 0 trains every layer (lufficc/SSD, and the fine-tuning base).
# constraint: >= 0.
_C.MODEL.BACKBONE.FREEZE_TO_STRIDE = 0

_C.MODEL.PRIORS = CN()
# Side length of each feature map, one entry per level, largest first (e.g. 38 for conv4_3 at 300).
# unit: cells.
_C.MODEL.PRIORS.FEATURE_MAPS = [38, 19, 10, 5, 3, 1]
# Distance between neighbouring prior centres on each level.
# unit: input pixels.
_C.MODEL.PRIORS.STRIDES = [8, 16, 32, 64, 100, 300]
# Side of the small square prior on each level (the paper's s_k times the image size).
# unit: input pixels.
_C.MODEL.PRIORS.MIN_SIZES = [30, 60, 111, 162, 213, 264]
# Used for the extra square prior of side sqrt(min_size * max_size) on each level.
# unit: input pixels. constraint: >= MIN_SIZES.
_C.MODEL.PRIORS.MAX_SIZES = [60, 111, 162, 213, 264, 315]
# Aspect ratios per level; each r adds a 1:r and an r:1 prior (so [2, 3] adds four priors).
_C.MODEL.PRIORS.ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
# Priors per feature-map cell on each level: 2 + 2 * len(ASPECT_RATIOS[level]).
# constraint: derived; empty (the default) computes it from ASPECT_RATIOS (for the default ratios, lufficc's
# [4, 6, 6, 6, 4, 4]), so a config that changes the ratios need not repeat it; given values are checked.
_C.MODEL.PRIORS.BOXES_PER_LOCATION = []
# Clamp the centre-form priors (cx, cy, w, h) to [0, 1], as lufficc/SSD and Caffe SSD do.
_C.MODEL.PRIORS.CLIP = True
# (new) Fit the priors to the training boxes when train.py starts (its recipe step, ssd/engine/recipe.py; the
# algorithm is ssd/modeling/prior_fitting.py): the backbone's levels are kept (a MobileNet's stride-8 map is
# added when small objects need it), and MIN_SIZES, MAX_SIZES, ASPECT_RATIOS, BOXES_PER_LOCATION, STRIDES,
# OUT_CHANNELS and STRIDE8_MAP are replaced by fitted values. train.py logs them and writes them into
# OUTPUT_DIR/config.yaml and every checkpoint (with AUTO False); test.py, demo.py and the tools take them from
# the checkpoint, or from that config.yaml, and never read the training data.
_C.MODEL.PRIORS.AUTO = False

_C.MODEL.BOX_HEAD = CN()
# Name of the box head; only "SSDBoxHead" exists (kept for lufficc/SSD YAML compatibility).
_C.MODEL.BOX_HEAD.NAME = "SSDBoxHead"
# Registered box predictor: "SSDBoxPredictor" (3x3 convs) or "SSDLiteBoxPredictor" (separable convs).
_C.MODEL.BOX_HEAD.PREDICTOR = "SSDBoxPredictor"

# ---------------------------------------------------------------------------------------------------
# INPUT: what the network sees
# ---------------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Side of the square network input; images are resized to IMAGE_SIZE x IMAGE_SIZE (aspect not kept).
# unit: pixels.
_C.INPUT.IMAGE_SIZE = 300
# Per-channel mean subtracted from RGB images in 0..255 (no division by a std, as in lufficc/SSD,
# so lufficc/SSD and torchvision ssd300_vgg16 weights transfer unchanged).
# unit: RGB pixel values.
_C.INPUT.PIXEL_MEAN = [123, 117, 104]
# (new) Training augmentation: "ssd" (the paper's photometric distortion, zoom-out, IoU crop and mirror, as
# lufficc/SSD), "crop" (the same without the zoom-out: for small objects, which a zoom-out shrinks below the
# smallest priors), "light" (photometric distortion and mirror only: faster learning on short runs), "none",
# or "auto": train.py picks "crop" when the zoom-out would shrink most boxes of some class out of reach of the
# finest priors, else "ssd", and logs the choice (ssd/engine/recipe.py, choose_augmentation).
_C.INPUT.AUGMENTATION = "ssd"
# (new) Largest image accepted, read from the file's header before anything is decoded: datasets (checked
# when built: one error naming every larger file), demo.py (the file is skipped and named) and the
# TorchServe handler (answered 413). A PNG of one colour, 30000 x 30000, is tiny on disk but 3 bytes a pixel
# once decoded. The default, 150 million (15000 x 10000), passes camera photos (24-100 megapixels);
# OpenCV's own limit is 2^30 (1074 million). 0 = no limit but OpenCV's.
# unit: pixels (width x height). constraint: >= 0.
_C.INPUT.MAX_IMAGE_PIXELS = 150_000_000

# ---------------------------------------------------------------------------------------------------
# DATASETS: names resolved by ssd/data/datasets/catalog.py
# ---------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Training dataset names; several are concatenated (e.g. ("voc_2007_trainval", "voc_2012_trainval")).
_C.DATASETS.TRAIN = ()
# Test dataset names, evaluated by test.py and at the end of training.
_C.DATASETS.TEST = ()
# (new) Validation dataset names for the validation loss / metric, best checkpoint and early stopping
# during training. Empty = hold out DATASETS.VAL_FRACTION of the training images (never the test set).
_C.DATASETS.VAL = ()
# (new) When DATASETS.VAL is empty, the share of training images held out for validation; the same images
# on every run (chosen by a hash of their file names, ssd/data/split.py). 0 = no validation, so no
# model_best.pth and no early stopping.
# constraint: in [0, 1).
_C.DATASETS.VAL_FRACTION = 0.2
# (new) Cap on the images held out by DATASETS.VAL_FRACTION (a number of images; 0 = no cap). Small datasets
# keep their full fraction; on COCO (118k images) a fifth would be 23,657 images held out of training and hours
# per validation, the cap keeps validation to minutes. The images beyond the cap stay in training.
# constraint: >= 0.
_C.DATASETS.VAL_MAX_IMAGES = 2000
# (new) Root folder under which catalog names are resolved (VOCdevkit / COCO layouts).
# Empty = $SSD_DATA_ROOT, else "datasets". $VOC_ROOT and $COCO_ROOT (lufficc/SSD) override per family.
_C.DATASETS.DATA_ROOT = ""
# (new) Class names of custom datasets registered from the config (DATASETS.REGISTER), background excluded.
# Empty = the names found in the annotations (COCO JSON) or the VOC classes.
_C.DATASETS.CLASS_NAMES = ()
# (new) Datasets registered from the config, each "name:format:path[:path]". Formats:
# "voc:ROOT:SPLIT" (VOC layout), "xml_folder:DIR", "coco:JSON:IMAGE_DIR", "csv:CSV:IMAGE_DIR",
# "synthetic:NUM_IMAGES:SEED". Example: "bccd_train:voc:../shared/data/BCCD:train".
_C.DATASETS.REGISTER = ()
# (new) Decode every image of every dataset once when it is built, so that a corrupt file stops the run at
# start-up, all bad files named, instead of when it is first loaded. A header check (missing file, not an
# image, annotated size differing from the file's) always runs; this adds one full decode per image.
_C.DATASETS.CHECK_IMAGES = False
# (new) Training images that may fail to load during a run (damaged or deleted after the start-up check)
# before it stops: each is skipped (the next image takes its place), named in a warning and counted; the
# next failure stops the run with an error naming the file and this key. 0 = stop at the first.
# constraint: >= 0.
_C.DATASETS.MAX_UNREADABLE_IMAGES = 10
# (new) Accept image and annotation files that are symbolic links leading outside their dataset folder
# (e.g. a folder of links to images kept elsewhere). Off: such a link is refused with an error naming it,
# as an absolute or '..' path in an annotation is; a dataset folder that is itself a link is always fine.
_C.DATASETS.FOLLOW_SYMLINKS = False

# ---------------------------------------------------------------------------------------------------
# DATA_LOADER
# ---------------------------------------------------------------------------------------------------
_C.DATA_LOADER = CN()
# Worker processes per DataLoader (0 = load in the main process).
_C.DATA_LOADER.NUM_WORKERS = 8
# Pin host memory for faster host-to-GPU copies (ignored on CPU).
_C.DATA_LOADER.PIN_MEMORY = True

# ---------------------------------------------------------------------------------------------------
# SOLVER: optimisation. Training is counted in iterations (one batch each), as in lufficc/SSD.
# ---------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# (new) Optimizer: "SGD" (lufficc/SSD, the paper) or "AdamW".
_C.SOLVER.OPTIMIZER = "SGD"
# Number of training iterations. unit: iterations.
_C.SOLVER.MAX_ITER = 120000
# (new) Train for this many passes over the training images instead; 0 = use MAX_ITER. train.py sets MAX_ITER
# to ceil(EPOCHS * images / (BATCH_SIZE * processes)) and logs it. unit: epochs.
# constraint: >= 0; with LR_SCHEDULER "cosine" (multistep LR_STEPS are in iterations).
_C.SOLVER.EPOCHS = 0
# (new) With EPOCHS > 0: the run is at least this many iterations. A small dataset gets more epochs (logged),
# and EVAL_PERIOD grows in proportion, so the number of validations stays. 0 = no floor. unit: iterations.
# constraint: >= 0.
_C.SOLVER.MIN_ITER = 0
# (new) With EPOCHS > 0: validate and save a checkpoint every this many epochs (sets EVAL_PERIOD and
# CHECKPOINT_PERIOD); 0 = keep those two as given. unit: epochs.
_C.SOLVER.EVAL_EPOCHS = 0
# (new) Learning-rate schedule after warmup: "multistep" (x GAMMA at each LR_STEPS) or "cosine".
_C.SOLVER.LR_SCHEDULER = "multistep"
# Iterations at which "multistep" multiplies the learning rate by GAMMA. unit: iterations.
_C.SOLVER.LR_STEPS = [80000, 100000]
# Factor applied at each LR step.
_C.SOLVER.GAMMA = 0.1
# Images per batch per process. unit: images.
_C.SOLVER.BATCH_SIZE = 32
# Base learning rate (per process; train.py does not rescale it).
_C.SOLVER.LR = 1e-3
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9
# L2 weight decay (SGD) or decoupled weight decay (AdamW).
_C.SOLVER.WEIGHT_DECAY = 5e-4
# Learning-rate factor at iteration 0 of the linear warmup. constraint: in (0, 1].
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
# Length of the linear warmup. train.py caps it at a tenth of MAX_ITER (rounded down) and logs the cap: a warmup
# sized for a long run would otherwise be all of a short one (a 2-image run of EPOCHS 40 has MAX_ITER 10).
# unit: iterations.
_C.SOLVER.WARMUP_ITERS = 500
# (new) Clip the gradient L2 norm to this value; 0 = no clipping.
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# (new) Mixed precision (torch.autocast + GradScaler) when training on CUDA; ignored on CPU.
_C.SOLVER.AMP = True
# (new) Train with channels-last (NHWC) weights and images. Faster on CUDA with AMP (tensor-core kernels
# take NHWC) and on CPU with oneDNN; benchmarks/train_step.py times both layouts on your machine ("ours" and
# "ours NCHW"). Results are the same within float rounding; checkpoints are saved in the usual NCHW layout.
_C.SOLVER.CHANNELS_LAST = True
# (new) Save a checkpoint every this many iterations (lufficc: --save_step). unit: iterations.
_C.SOLVER.CHECKPOINT_PERIOD = 2500
# (new) Keep only the newest this many periodic checkpoints model_{iteration}.pth; older ones are deleted
# after each save. model_best.pth, model_final.pth and the checkpoint last_checkpoint names are always kept.
# 0 = keep every one (lufficc/SSD).
_C.SOLVER.MAX_TO_KEEP = 3
# (new) Validate every this many iterations; 0 = only at the end (lufficc: --eval_step). unit: iterations.
_C.SOLVER.EVAL_PERIOD = 2500
# (new) Log a line / write metrics every this many iterations (lufficc: --log_step). unit: iterations.
_C.SOLVER.LOG_PERIOD = 10
# (new) Metric that selects model_best.pth, e.g. "val/loss" or "bbox/AP50"; empty = no best checkpoint.
_C.SOLVER.BEST_METRIC = "val/loss"
# (new) "min" if a smaller BEST_METRIC is better (losses), "max" for AP.
_C.SOLVER.BEST_MODE = "min"
# (new) Stop after this many validations without improvement of BEST_METRIC; 0 = never stop early.
_C.SOLVER.EARLY_STOP_PATIENCE = 0

# ---------------------------------------------------------------------------------------------------
# TEST: inference and post-processing
# ---------------------------------------------------------------------------------------------------
_C.TEST = CN()
# IoU above which NMS suppresses a lower-scoring box of the same class. unit: IoU.
_C.TEST.NMS_THRESHOLD = 0.45
# Boxes with a class score at or below this are dropped before NMS. unit: probability.
_C.TEST.CONFIDENCE_THRESHOLD = 0.01
# Keep at most this many candidates per class before NMS (the pre-NMS top-k); -1 = no limit.
# (lufficc/SSD defines this key but never reads it; here it is used.)
_C.TEST.MAX_PER_CLASS = -1
# Keep at most this many detections per image after NMS.
_C.TEST.MAX_PER_IMAGE = 100
# Images per inference batch.
_C.TEST.BATCH_SIZE = 10
# (new) Evaluators run by test.py and validation: any of "coco", "voc".
_C.TEST.EVALUATORS = ("coco", "voc")
# (new) Score threshold of the error analysis (TP/FP/FN, precision/recall/F1, confusion matrix).
# unit: probability.
_C.TEST.ANALYSIS_SCORE_THRESHOLD = 0.5
# (new) At the end of train.py, evaluate model_best.pth (the checkpoint validation chose by
# SOLVER.BEST_METRIC) on DATASETS.TEST instead of the final weights, when there is one. Off by default, as in
# lufficc/SSD and Detectron2, which evaluate the final weights; configs/finetune_ssdlite320.yaml turns it on.
_C.TEST.EVALUATE_BEST = False

# ---------------------------------------------------------------------------------------------------
# LOGGING (new)
# ---------------------------------------------------------------------------------------------------
_C.LOGGING = CN()
# Write TensorBoard event files to OUTPUT_DIR/tf_logs (needs the `tensorboard` package).
_C.LOGGING.TENSORBOARD = True
# Log to Weights & Biases (needs `pip install -e .[wandb]`; WANDB_MODE=offline works without an account).
_C.LOGGING.WANDB = False
# wandb project name.
_C.LOGGING.WANDB_PROJECT = "ssd"
# Show a tqdm progress bar during training.
_C.LOGGING.PROGRESS_BAR = True

# (new) Seed of Python, NumPy and torch RNGs (data order and augmentation included). -1 = random.
_C.SEED = 0
# Folder for checkpoints, logs, metrics.json and evaluation results.
_C.OUTPUT_DIR = "outputs"
