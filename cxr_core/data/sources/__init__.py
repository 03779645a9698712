"""Where ``data/raw`` comes from: the phantom ChestX-ray14 and NIH's official download."""
