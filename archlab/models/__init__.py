"""One module per family; importing a family registers its variants."""

from archlab.models import (  # noqa: F401
    alexnet,
    cifar_resnet,
    convnext,
    densenet,
    efficientnet,
    efficientnet_v2,
    googlenet,
    inception,
    mnasnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    regnet,
    resnet,
    shufflenet_v2,
    squeezenet,
    vgg,
)
