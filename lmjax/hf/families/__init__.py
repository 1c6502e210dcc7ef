"""The model families lmjax ships, one file each (its graph's defaults, its Hugging Face config
keys both ways, its tensor names), registered here: adding a family is a file in this folder, a
line below, a preset (lmjax/model/presets.py) and tests. A family of one's own registers the
same way from anywhere: `lmjax.hf.family.register(MY_FAMILY)`."""

from lmjax.hf.families import (bert, distilbert, gemma2, gemma3, gpt2, llama, mistral, mixtral,
                               modernbert, qwen3, qwen3_moe)
from lmjax.hf.family import register

for _module in (gpt2, bert, distilbert, modernbert, llama, mistral, qwen3, gemma2, gemma3,
                mixtral, qwen3_moe):
  register(_module.FAMILY)
