"""Self-supervised pretraining: HuBERT masked-unit prediction (`model=hubert_pretrain`), its
frame features and unit targets, DistilHuBERT distillation (`model=distilhubert`), and the
`export/` folder both write for the CTC fine-tuning path."""
