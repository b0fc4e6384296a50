"""Build the config's model and load a checkpoint into it, pruned or not."""
from paddleseg.utils.checkpoint import load_model_weights


def build_and_load(cfg, model_path=None):
    """``cfg``'s model; with ``model_path`` its weights, the model shrunk first to the saved
    layer shapes when the checkpoint is a pruned one (they travel inside ``model.pdparams``)."""
    model = cfg.build_model()
    return load_model_weights(model, model_path) if model_path else model
