"""Data: training and STS-B sources (sources), the LightningDataModule (datamodule), the offline corpus (corpus)."""
