from vdfast.models.convnet3d import STUDENTS, ConvNet2D, ConvNet3D, FrameRNN, build_student, count_params

__all__ = ["ConvNet3D", "ConvNet2D", "FrameRNN", "STUDENTS", "build_student", "count_params"]
