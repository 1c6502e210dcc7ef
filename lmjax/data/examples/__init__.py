"""Examples per objective: labelled (classification), instruction (SFT), masking (MLM) and
packing."""
