from vdfast.models.convnet3d import (STUDENTS, ConvNet2D, ConvNet3D, FrameRNN, RowDropout, build_student,
                                     count_params)

__all__ = ["ConvNet3D", "ConvNet2D", "FrameRNN", "RowDropout", "STUDENTS", "build_student",
           "count_params"]
