from vdfast.models.build import DataShape, build
from vdfast.models.convnet3d import (STUDENTS, ConvNet2D, ConvNet3D, FrameRNN, RowDropout, build_student,
                                     count_params)

__all__ = ["ConvNet3D", "ConvNet2D", "DataShape", "FrameRNN", "RowDropout", "STUDENTS", "build",
           "build_student", "count_params"]
