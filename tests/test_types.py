import sympy

from mmgraph.ir import types as T


def test_kinds_have_default_dtype_and_modality():
    assert str(T.make("Image", ("B", 3, 224, 224))) == "Image<image>[B, 3, 224, 224]"
    assert str(T.make("Tokens", ("B", "T"))) == "Tokens<text>[B, T]"
    assert T.make("Tokens", ("B", "T")).dtype == "i64"
    assert str(T.make("Seq", ("B", 4, 8), dtype="f16")) == "Seq<f16>[B, 4, 8]"


def test_dims_print_as_people_write_them():
    t = T.sym("T")
    assert T.format_dim(576 + t) == "576 + T"
    assert T.format_dim(t - 1) == "T - 1"
    assert T.format_dim(sympy.Integer(7)) == "7"
    assert T.format_dim(T.sym("H") / 14) == "H/14"


def test_dim_equality_is_symbolic():
    t = T.sym("T")
    assert T.same_dim(t + 576, 576 + t)
    assert T.same_dim((t + 2) * 2, 2 * t + 4)
    assert T.differ(sympy.Integer(768), sympy.Integer(1024))
    assert not T.differ(t, sympy.Integer(5))  # unknown, not provably different
    assert not T.is_integral(sympy.Integer(225) / 14)
    assert T.is_integral(T.sym("H"))


def test_axes_by_kind():
    logits = T.make("Logits", ("B", 10))
    assert logits.axes == ("B", "V")
    assert T.make("Logits", ("B", "N", 10)).axes == ("B", "N", "V")
    assert T.make("Image", ("B", 3, 8, 8)).dim("H") == 8
