"""The prediction interface the scripts build on: load_predictor(...) -> Predictor.

    predictor = load_predictor("workspace/wb/best")
    probs = predictor.predict([clean_text(post) for post in posts])   # (n, 6), LABELS order

Minimal version (torch backend only) on top of ewect.modeling; the serving work replaces it with
the full module (ONNX backend included) behind the same surface.
"""
from ewect.config import LABELS, MAX_LENGTH
from ewect.errors import UserError

DEFAULT_BATCH_SIZE = 64


class Predictor:
    """A loaded checkpoint that turns cleaned texts into label probabilities."""

    labels = LABELS

    def __init__(self, model, tokenizer, device):
        self.model, self.tokenizer, self.device = model, tokenizer, device

    def predict(self, cleaned_texts, batch_size=None, max_length=MAX_LENGTH):
        """Probabilities (numpy, one row per text in input order, columns in LABELS order) of
        texts that went through ewect.cleaning.clean_text."""
        from ewect.modeling import predict_probabilities

        return predict_probabilities(self.model, self.tokenizer, list(cleaned_texts), self.device,
                                     batch_size or DEFAULT_BATCH_SIZE, max_length)


def load_predictor(model_dir, backend="torch", device="auto", int8=False):
    """The Predictor of a checkpoint folder written by train.py."""
    if backend != "torch":
        raise UserError(f"--backend {backend}: this version predicts with torch only")
    from ewect.modeling import load_for_prediction

    return Predictor(*load_for_prediction(model_dir, device, int8))
