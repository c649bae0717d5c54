"""Tiny randomly initialised transformers text encoders written into a directory (config, weights, tokenizer),
for tests of language conditioning: nothing downloads. One WordPiece tokenizer serves every architecture."""

from __future__ import annotations

from pathlib import Path

WORDS = ("pick", "up", "the", "can", "open", "door", "lift", "red", "cube", "stack", "on", "green", "put", "round",
         "nut", "peg", "place", "it", "in", "its", "bin", "transfer", "to", "other", "arm", "fake", "task", "0", "1")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_tiny_text_model(directory: Path, arch: str = "bert", hidden: int = 32) -> Path:
    """A tiny `arch` ("bert", "clip", "t5") text encoder with random weights and a WordPiece tokenizer, saved with
    save_pretrained into `directory`; returns it."""
    import torch
    import transformers
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL, *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file=
    n = tokenizer.vocab_size
    if n != len(SPECIAL) + len(WORDS):
        raise RuntimeError(f"the tiny tokenizer has {n} tokens, expected {len(SPECIAL) + len(WORDS)}")
    torch.manual_seed(0)
    if arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            vocab_size=n, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64))
    elif arch == "clip":
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=n, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            pad_token_id=0))
    elif arch == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=n, d_model=hidden, d_kv=16, d_ff=64, num_layers=2, num_heads=2))
    else:
        raise ValueError(arch)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
