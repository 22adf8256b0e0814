from gateway.api.privacy import mask_name, mask_phone, mask_receiver


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


def test_an_emergency_contact_named_by_their_phone_is_masked_as_a_phone() -> None:
    assert mask_receiver("contact:13987654321") == "contact:139****4321"
    # Receivers in the policy and token names are not personal data.
    assert mask_receiver("wang-fang") == "wang-fang"
