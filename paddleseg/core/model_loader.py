"""Build the config's model and load a checkpoint into it, pruned or not."""
import os

from paddleseg.utils.checkpoint import load_model_weights, CheckpointError

PLAN_FILE = "prune_plan.json"


def plan_path_for(model_path):
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    return os.path.join(folder, PLAN_FILE)


def build_and_load(cfg, model_path=None):
    """``cfg``'s model; with ``model_path`` its weights, shrunk first to the saved channel plan
    when the checkpoint is a pruned one (``prune_plan.json`` beside ``model.pdparams``)."""
    model = cfg.build_model()
    if not model_path:
        return model
    if not os.path.exists(model_path):
        raise CheckpointError(f"model file not found: {model_path}")
    if os.path.isfile(plan_path_for(model_path)):
        from paddleseg.slim import load_pruned
        load_pruned(model, model_path)
        return model
    return load_model_weights(model, model_path)
