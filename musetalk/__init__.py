"""MuseTalk 1.5 (TMElyralab's, as LiveTalking runs it): one UNet pass in the latent space of
the Stable Diffusion VAE, conditioned on whisper-tiny audio features, with users' own
`models/musetalkV15`, `models/sd-vae`, `models/whisper` and avatar folders."""
