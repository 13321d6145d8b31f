"""Models used across geomopt: ReLU MLPs and CNNs with balanced and unbalanced initializations, ReLU RNNs,
batch-normalized recurrent networks (BN-LSTM, BN-RNN) and the unitary RNN (uRNN)."""

from geomopt.nn.bn_rnn import BNLSTM, BNRNN, BNInputLSTM, BNSequenceModel, StepBatchNorm
from geomopt.nn.cnn import CNN
from geomopt.nn.factory import trusted_models
from geomopt.nn.init import INITS, initialize, layerwise_rescale
from geomopt.nn.mlp import MLP
from geomopt.nn.registry import MODELS, build_model
from geomopt.nn.relu_rnn import RNN_INITS, LSTMBaseline, ReLURNN
from geomopt.nn.urnn import UnitaryRNN, mod_relu

__all__ = ["MLP", "CNN", "INITS", "initialize", "layerwise_rescale", "MODELS", "build_model", "ReLURNN", "LSTMBaseline",
           "RNN_INITS", "BNLSTM", "BNRNN", "BNInputLSTM", "BNSequenceModel", "StepBatchNorm",
           "UnitaryRNN", "mod_relu", "trusted_models"]
