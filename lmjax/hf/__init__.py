"""The Hugging Face format and nothing else: the model families, one file each (`families/`,
registered through `family`), config.json <-> ModelConfig (`config`, `config_export`,
`config_fields`, `tables`), the key-map engine (`key_maps`, `transforms`, `bindings`, `engine`),
safetensors streaming (`safetensors_files`), tokenizer files, PEFT adapters (`adapters`,
`peft_import`), what an export keeps of its source's config (`source_config`), the local hub
cache (`hub`) and GGUF files read as HF directories (`gguf/`). It knows the model layer and
nothing above it: no runs, training, inference or command line (import-linter contracts in
pyproject.toml).

Import the modules themselves; this package's namespace stays empty so that light callers
(config's hub ids) do not load the engine.
"""
