from ema_lightning.cli import main

main()
