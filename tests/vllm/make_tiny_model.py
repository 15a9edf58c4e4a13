"""Write a tiny random-weight Llama that vLLM can serve, with nothing downloaded.

Run with the vLLM venv's Python (it has torch, transformers and tokenizers):

    var/vllm-venv/bin/python tests/vllm/make_tiny_model.py OUT_DIR

Its answers are gibberish, but the tokenizer, chat template, usage counts and logprobs that vLLM
serves from it are the real ones, which is what the gateway and the batch runner are tested on.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# ChatML-like, rendered by vLLM's own chat code; add_generation_prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find capital France Paris Berlin price token model"
).split()


def corpus(lines: int, seed: int) -> list[str]:
    """Generated sentences with punctuation, digits and role names, so the byte-level BPE sees them all."""
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        role, end, number = rng.choice(["system", "user", "assistant"]), rng.choice(".?!,;:"), rng.randint(0, 9999)
        text.append(f"<|{role}|> {' '.join(words)}{end} {number}")
    return text


def tokenizer_make(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(5000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model_make(out: Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Save tokenizer + config + random weights (~4 MB) to ``out`` and return it."""
    torch.manual_seed(seed)
    tokenizer = tokenizer_make(vocab_size, seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(model_make(args.out, vocab_size=args.vocab_size, seed=args.seed))


if __name__ == "__main__":
    main()
