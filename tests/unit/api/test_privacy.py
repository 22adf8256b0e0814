from gateway.api.privacy import mask_name, mask_phone


def test_names_keep_their_first_and_last_character() -> None:
    assert mask_name("张三明") == "张*明"
    assert mask_name("欧阳小明") == "欧**明"
    assert mask_name("王五") == "王*"
    assert mask_name("王") == "*"


def test_phones_keep_the_first_three_and_last_four_digits() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+8613812345678") == "+86*******5678"
    assert mask_phone("87654321") == "****4321"
    assert mask_phone("110") == "***"
