from monai_ext.networks.nets.autoencoderkl import AutoencoderKL

__all__: list[str] = ["AutoencoderKL"]
