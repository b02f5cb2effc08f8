#!/usr/bin/env python3
"""Build a tiny random-weight Qwen3-VL checkpoint, offline, in seconds.

The checkpoint has the real architecture class (Qwen3VLForConditionalGeneration),
a byte-level BPE tokenizer trained in-process with the Qwen special tokens, the
real image and video processors (patch 16, merge 2) and the real Qwen3-VL chat
template (tools/qwen3_vl_chat_template.jinja, verbatim). Its answers are random
text, but every code path (chat template, processor, vision tower, M-RoPE,
generate) is the one the real model runs.

    python tools/make_tiny_model.py OUT_DIR [--loop] [--real-vocab]

--loop sets the weights so that greedy decoding repeats a short cycle of tokens
forever (used to test the repetition-loop guard); --stop makes every answer end
at once with <|im_end|> (used to test finish_reason "stop"); --script TEXT
makes greedy decoding answer exactly TEXT (used to test grounding and
structured extraction on answers of a known shape).

--real-vocab swaps the small tokenizer for Qwen's real one (tools/qwen_bpe.py:
151,643 BPE ranks from PyPI, the real special tokens at their real ids) and
sizes the embeddings to the real 151,936 rows: prompts then have the real
model's token counts and the decoder sees real multi-byte token splits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The real Qwen3-VL-Instruct chat template, verbatim (see tools/README.md for its source and checksum):
# a system message only when it is the first message, images and videos only in user (and tool) turns,
# assistant turns as text only, "<|im_start|>assistant\n" as the generation prompt, "Picture N: " with
# add_vision_id. The tiny checkpoints render prompts exactly as the real model's processor does.
CHAT_TEMPLATE_PATH = Path(__file__).resolve().parent / "qwen3_vl_chat_template.jinja"
CHAT_TEMPLATE = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")

CORPUS = [
    "The invoice lists the total amount due, the date and the customer address.",
    "A photo of a cat sitting on a wooden table next to a cup of coffee.",
    "Describe this image. Extract all text. What is the main subject?",
    "Invoice number 2024-001. Item, quantity, unit price, amount. Total: $1,234.56",
    "Bonjour, ça va? Größe, naïve café. 日本語のテキスト。",
    "0123456789 !@#$%^&*()[]{}<>,.;:'\"-_=+/?\\|`~",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.padding_side = "left"
    return fast


def build(out_dir: str | Path, loop: bool = False, stop: bool = False, script: str | None = None,
          seed: int = 0, real_vocab: bool = False) -> Path:
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if real_vocab:
        import qwen_bpe

        tokenizer = qwen_bpe.build_tokenizer()
        vocab_size = qwen_bpe.VOCAB_SIZE
    else:
        tokenizer = build_tokenizer()
        if script is not None:
            tokenizer.add_tokens([script])  # the whole scripted answer is one token
        vocab_size = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    head_dim = 16
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=head_dim,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [4, 2, 2],  # sums to head_dim / 2
                "mrope_interleaved": True,
            },
            tie_word_embeddings=False,
            initializer_range=0.1,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=64,
            num_position_embeddings=256,
            deepstack_visual_indexes=[0],
            initializer_range=0.1,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    if loop:
        _make_looping(model, tokenizer)
    elif script is not None:
        _make_scripted(model, tokenizer, script)
    else:
        _prefer_words(model, tokenizer, stop=stop)
    model.generation_config = generation_config(ids)
    model.save_pretrained(out, safe_serialization=True)

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def generation_config(ids: dict):
    """Like the real checkpoint's generation_config.json: sampling is the default."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.0,
    )


def _prefer_words(model, tokenizer, stop: bool = False) -> None:
    """Make random answers readable: only word-like tokens get a high logit.

    Dimension 0 of every token embedding is a large constant that no layer
    writes to, so the final hidden state always has a large positive dimension
    0; the LM head gives every word-like token the same weight on it. The
    argmax among those words still depends on the input (the other dimensions).
    With stop=True, <|im_end|> gets the largest weight: every answer is empty
    and ends at once with finish_reason "stop".
    """
    import torch

    lm = model.model.language_model
    head = model.lm_head.weight
    with torch.no_grad():
        lm.embed_tokens.weight[:, 0] = 4.0
        for layer in lm.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        head[:, 0] = 0.0
        texts = tokenizer.batch_decode([[i] for i in range(min(head.shape[0], len(tokenizer)))])
        for token_id, text in enumerate(texts):
            if text.strip() and text.isprintable() and any(ch.isalnum() for ch in text) and text.isascii():
                head[token_id, 0] = 1.0
        if stop:
            head[tokenizer.convert_tokens_to_ids("<|im_end|>"), 0] = 3.0


def _make_scripted(model, tokenizer, script: str) -> None:
    """Greedy decoding answers exactly `script`, then <|im_end|>, whatever the input.

    The layers become the identity, so the logits depend on the last token
    alone: after the prompt's final newline comes the script's first token,
    after each token the next one, after the last <|im_end|>. With the small
    tokenizer the script is one added token; with the real vocabulary it is
    the script's own tokens, which must all differ (and none be a newline).
    """
    import torch

    lm = model.model.language_model
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level BPE's "\n"
    if script in tokenizer.get_vocab():
        answer = [tokenizer.convert_tokens_to_ids(script)]
    else:
        answer = tokenizer(script, add_special_tokens=False)["input_ids"]
    chain = [newline, *answer]
    if len(set(chain)) != len(chain) or len(chain) >= lm.embed_tokens.weight.shape[1]:
        raise ValueError(f"cannot script {script!r}: its tokens repeat, hold a newline or are too many")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        lm.embed_tokens.weight.zero_()
        lm.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for dim, (token, following) in enumerate(zip(chain, [*answer, im_end])):
            lm.embed_tokens.weight[token, dim] = 1.0
            model.lm_head.weight[following, dim] = 10.0


def _make_looping(model, tokenizer) -> None:
    """Set the LM head so greedy decoding cycles through a few plain tokens.

    Every hidden state is pushed to one direction, and the head maps the
    embedding of token A to B, B to C and C to A, so the argmax only depends on
    the previous token: the output repeats "ABC" until the token limit.
    """
    import torch

    lm = model.model.language_model
    cycle = [tokenizer.convert_tokens_to_ids(t) for t in ("a", "b", "c")]
    with torch.no_grad():
        for layer in lm.layers:  # layers become the identity (residual only)
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = lm.embed_tokens.weight
        emb.zero_()
        dim = emb.shape[1]
        for i, tok in enumerate(cycle):
            emb[tok, i] = 1.0
        for tok in range(emb.shape[0]):  # every other token leads into the cycle
            if tok not in cycle:
                emb[tok, 2] = 1.0
        lm.norm.weight.fill_(1.0)
        if model.lm_head.weight.data_ptr() == emb.data_ptr():
            # tied: untie so the head can differ from the embedding
            model.config.tie_word_embeddings = False
            model.config.text_config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(emb))
        head = model.lm_head.weight
        head.zero_()
        for i, tok in enumerate(cycle):
            head[cycle[(i + 1) % 3], i] = 10.0
        del dim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the checkpoint to")
    parser.add_argument("--loop", action="store_true", help="weights that make greedy decoding loop")
    parser.add_argument("--stop", action="store_true", help="weights that end every answer at once")
    parser.add_argument("--script", metavar="TEXT", help="weights that answer exactly TEXT to anything")
    parser.add_argument("--real-vocab", action="store_true",
                        help="Qwen's real tokenizer and vocabulary size (fetches its BPE ranks once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.out_dir, loop=args.loop, stop=args.stop, script=args.script, seed=args.seed,
                 real_vocab=args.real_vocab)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
