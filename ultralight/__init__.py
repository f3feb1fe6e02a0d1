"""Ultralight (anliyuan's Ultralight-Digital-Human, as LiveTalking runs it): a small UNet that
redraws a 160x160 mouth crop from HuBERT features, with users' own `ultralight.pth` files."""
