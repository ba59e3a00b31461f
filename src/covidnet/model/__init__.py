"""The network (COVIDNet, a 3D DenseNet), its FLOP summary, and the model folder format."""
