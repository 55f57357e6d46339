"""DBNet building blocks: encoders (timm), decoders (FPN), heads (DB), losses (DB) and the model builder."""
