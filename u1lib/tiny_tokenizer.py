"""The embedded tiny model's tokenizer: byte-level BPE trained on a fixed caption corpus, so the
snapshot needs no download and typical captions and the chat prefix encode in few tokens; with the
tokenizer_config.json that transformers' PreTrainedTokenizerFast reads."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from u1lib.data.prompts import SYSTEM_MESSAGE_FOR_GEN

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
TOKENIZER_VOCAB = 1024  # trained BPE vocab + special tokens
VOCAB_MULTIPLE = 64

# The tokenizer learns the chat prefix (generation system message and role names) so the
# conditional prefix stays short; counting it twice lets its merges win over caption words
# (288 tokens instead of 375).
CHAT_ROLES = "system\nuser\nassistant\n"
PREFIX_WEIGHT = 2

# Generic photo-caption vocabulary, so typical captions encode in few tokens.
CAPTION_CORPUS = """\
A photo of an astronaut in a white space suit standing in front of a flag, studio lighting.
A close-up portrait of a tabby cat with green eyes sitting on a wooden table.
A cup of coffee with latte art on a saucer, seen from above, warm morning light.
A rocket on the launch pad under a clear blue sky, with steam rising at the base.
A man with a camera standing on a grassy field, black and white photograph.
A brown horse running across a meadow at sunset, motion blur, golden hour.
A red fox sitting in the snow, soft winter light, shallow depth of field.
A bowl of fresh fruit with apples, oranges, grapes and a banana on a kitchen counter.
A small boat floating on a calm lake surrounded by tall pine trees and mountains.
A busy city street at night with neon signs, cars, people walking and wet pavement reflections.
An old stone bridge over a river in a quiet village, cloudy afternoon.
A young woman wearing a yellow dress and a straw hat walking along the beach.
A dog playing with a ball in the park, green grass, bright sunny day.
A plate of pasta with tomato sauce and basil, dark background, food photography.
A colorful hot air balloon drifting over rolling hills in the early morning fog.
A vintage car parked in front of a brick building with large windows.
A child reading a book under a tree, dappled sunlight, peaceful scene.
A lighthouse on a rocky coast with waves crashing against the cliffs, dramatic sky.
A snowy mountain peak reflected in a clear alpine lake, wide angle landscape.
A bird perched on a branch with pink cherry blossoms, macro shot, blurred background.
Two people sitting at a cafe table talking and laughing, candid street photo.
A modern living room with a grey sofa, a green plant, a lamp and a wooden floor.
A field of sunflowers stretching to the horizon under a bright summer sky.
A close-up of raindrops on a window, city lights blurred behind the glass.
A painting of a sailing ship on a stormy sea, oil on canvas, rich texture.
An aerial view of a winding road through a dense autumn forest with orange and red leaves.
A bicycle leaning against a blue wall with flowers in a pot, simple composition.
A chef cooking in a restaurant kitchen, flames rising from the pan, action shot.
A stack of books and a pair of glasses on a desk next to a cup of tea.
A desert landscape with sand dunes, long shadows and a lone camel in the distance.
A portrait of an elderly man with a grey beard, soft window light, high detail.
A black cat sleeping on a soft blanket, cozy and warm, natural colors.
A train crossing a stone viaduct in the green countryside, top view.
A waterfall in a tropical jungle with mist, ferns and wet rocks, long exposure.
A wooden cabin in the woods covered with snow, smoke from the chimney, dusk.
A group of friends hiking on a mountain trail with backpacks, clear weather.
A glass of red wine on a table with cheese and bread, evening, candle light.
A close-up photo of a flower with purple petals and a bee collecting pollen.
A small white house with a red roof on a hill, blue sky with fluffy clouds.
A skyline of tall buildings at dawn, reflections in the water of the harbor.
Illustration, digital art, watercolor, sketch, cartoon, anime, realistic, cinematic, minimalist style.
Left, right, center, top, bottom, behind, between, under, over, inside, outside, near, far.
One, two, three, four, five, many, several, some, every, each, large, small, tiny, huge, bright, dark.
Happy, sad, calm, quiet, busy, empty, full, old, new, young, beautiful, sharp, detailed, smooth, rough.
"""


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE on the fixed corpus; special tokens appended after the learned vocab (as Qwen does).

    The byte alphabet is always present, so any UTF-8 text encodes, and decoding is lossless.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB - len(SPECIAL_TOKENS),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([SYSTEM_MESSAGE_FOR_GEN, CHAT_ROLES] * PREFIX_WEIGHT + [CAPTION_CORPUS], trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def vocab_size_of(tokenizer: Tokenizer) -> int:
    """The model's vocab_size: the tokenizer's, rounded up to a multiple of :data:`VOCAB_MULTIPLE`."""
    return -(-tokenizer.get_vocab_size() // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def tokenizer_config_dict(tokenizer: Tokenizer) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast (no remote code, no BOS)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "unk_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(token)): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token in SPECIAL_TOKENS
        },
    }
