//! Test keys, generated once with openssl 3 (`openssl genpkey -algorithm RSA -pkeyopt
//! rsa_keygen_bits:2048`, `-algorithm EC -pkeyopt ec_paramgen_curve:P-256`, `-algorithm ED25519`,
//! then `openssl pkey -pubout`). Keys, not certificates: they do not expire. Never used outside tests.

/// RSA 2048, PKCS#8.
pub const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDHllsHLVE3pNXJ\n\
mm4D6+LArCu9dfq1yGjcuX/c8yva8Hfr0nYBYtwd8PC0Nd/HplZnnEIidijJJ37s\n\
7dGgoW6KrJJ9e5hvnX00sbr4ooQon1eblZST+lStx/PZSakkFsfDE0y3X9RqxFMR\n\
TfH/YW6H6NpsDNmuE3P+nHyFrcPI/pR2/L83xcfCqJ1gAognYBJtRq0vCYRjnSiV\n\
c7Suot+IanXDTnGJn1DP24QAgWelXN/VTAjiF0PvMuCXwJuQ7nYgXB6u6hdXBJad\n\
XcKUvg/BL0TLbyKqatABPoJmwroIkAIkBs/X/0XeBUuV7YYOqccllgozDAKFK117\n\
10PvhNRTAgMBAAECggEAMkkvph9E10AwnRrLnTFRcDnwy0tuX16fDP2vuXuLER6F\n\
GGVuVesSiniqLL1mJGdEXdaA0y3yGLxavlcs+cuyjj3sqrD5NyX25c/hy8MmiRWc\n\
fRay2JW5wA8g4R4t/2m96uhx68G5Qy0zwKhi0HU75AJHBfI25iUAlKXYudWN/pWz\n\
3NRWOXwXpr0NVW8Ced5Ei/JamnE415Jm9y8VMzlpSH1xD6om4TH9/duJVhEMk/7U\n\
J000m7os/VUPwhwLNJykCuCZ09AEDs4sN4sJaeqyz0DZIQROhw9Xc97/KhOzwKrR\n\
ztoGX8FdulZnjJKC1oRVQAuzkLZr92IM9BQCQFYgAQKBgQDpNU1BRGdhHyyAiuXD\n\
yA39XWSM5NewndH89OAAzvruyNrK6Ebnu6ICOITaUSH481QDhQW28M7L6jmSymyb\n\
pDrdamkl0Qg6ipm2Rg2lLMzJHz9uzmYWf/JjyPWXHvqPfqWvhFn3ZARog1CDmvxh\n\
QiiyLH0EYSESPue1tkUyULcd8wKBgQDbF+JMH7xmGT3JMnC8yvfP8UPC0fMEQaZ6\n\
28Uffy5xtgfUU6lr3HzSz4A5yMMcwbvVxNe/corQdg7uL9+zQ2bPqfhbR2dyJm3u\n\
JNgJu3nCweFRfpA/limP5BeB9iADhnbvfz5gfMpIlW7MZjJkqKwP8aQhKZOsF2lL\n\
JkzC6tQoIQKBgG370V+Cny7SwO4uk4XuB4sCTLWWB5MoGyytYCeBdh6/Y1Bmk2oe\n\
t51Mgntj4B3ExE6UoclRcHYDFPwBs48DuS9LTCOlnbfePfgUucK4iiwgLI5ZkRPz\n\
a6Fb2VdYKNsb45APX06pQNr5czNeGMDVrtO434z9MdelCypLt/6uym25AoGBAMWD\n\
kKVj7up0UvkxGeV5bVLvhFD8CQOLU9RqkBlHBM3KduB508DDc1xxaH2vegZQuU+M\n\
N5wGXRJ1fBxK2Ha5itQnvRg9FQsZjf0lBgYwFyL2unRHjy9j5nAsBu1Iv6+t50ce\n\
BVPi7FHnNY3bjA6m6QcupvKmktSP/oKbMpR+M2lBAoGAOwjoOCwfUiKURt57RaF/\n\
qQKIImQ4/v0rcFroLH/l4SpmtEZaz6n9n6C9ayPOOmyN0CGaWPpOjqTh9T9fstjs\n\
osrf3KYiB6IHcB/fWSPR9d7DBr6YsC6w885TzYm/zcD9mAjg71/r3K0lLjxZNAPH\n\
7jeGY8gK4DDkKGKM/hfR+3M=\n\
-----END PRIVATE KEY-----\n\
";
/// Its public key (SPKI).
pub const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx5ZbBy1RN6TVyZpuA+vi\n\
wKwrvXX6tcho3Ll/3PMr2vB369J2AWLcHfDwtDXfx6ZWZ5xCInYoySd+7O3RoKFu\n\
iqySfXuYb519NLG6+KKEKJ9Xm5WUk/pUrcfz2UmpJBbHwxNMt1/UasRTEU3x/2Fu\n\
h+jabAzZrhNz/px8ha3DyP6Udvy/N8XHwqidYAKIJ2ASbUatLwmEY50olXO0rqLf\n\
iGp1w05xiZ9Qz9uEAIFnpVzf1UwI4hdD7zLgl8CbkO52IFweruoXVwSWnV3ClL4P\n\
wS9Ey28iqmrQAT6CZsK6CJACJAbP1/9F3gVLle2GDqnHJZYKMwwChStde9dD74TU\n\
UwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
/// EC P-256, PKCS#8.
pub const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgAnZnQ/x3wpOAWMTJ\n\
Cdn5URLuIXHFAbgKc34AHHtUXXahRANCAARI/dsUpU5Qt36p90leJmtrwcQFf/jz\n\
AE65kKZQE6jCGCzzHIzvHPSrMiuG4N5lMFNq9LfiwAYg3i65fckFewnM\n\
-----END PRIVATE KEY-----\n\
";
/// Its public key (SPKI).
pub const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAESP3bFKVOULd+qfdJXiZra8HEBX/4\n\
8wBOuZCmUBOowhgs8xyM7xz0qzIrhuDeZTBTavS34sAGIN4uuX3JBXsJzA==\n\
-----END PUBLIC KEY-----\n\
";
/// Ed25519, PKCS#8.
pub const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIK608GF+PLNUGZytXB0l4WHm1yd0IGPpDQ8Z0nVplLL9\n\
-----END PRIVATE KEY-----\n\
";
/// Its public key (SPKI).
pub const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAT3uETX9TcjSxTikohDZKF/880AoHpl2k7Q+NA3u/z6c=\n\
-----END PUBLIC KEY-----\n\
";
/// An EC P-384 public key (for the curve check: not an ES256 key).
pub const EC384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEhNiGjkc3xEVJjyBi+b4oFcDKJcCbl9Pu\n\
QkK3W5XOpA4szY3zRW1RG9182mGAG1GQ4qTWWs5o0Y5FE0X3YsHqQuy09rMO8Ab/\n\
JH+PMgDYKcDTP7DBUrm58/OLKbQxqi1o\n\
-----END PUBLIC KEY-----\n\
";
/// An RSA 1024 public key (too small: RFC 7518 §3.3 requires 2048 bits).
pub const RSA1024_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDN7jJ2wGI0VZPGqeiGY2vLNNGH\n\
FcL3anXPFpt1mjYPAR3bSaCjZEoNEjEYQSrX42eenzZPgEKYhGNun1Wt+i0499NC\n\
vRQoZ5grKdILLJvMkbmrmj3n5VqcfDI2GHtUwZleXn+FnkwnEcdXK876IDJqhLGK\n\
gljB6EbxOiBZNtvDrwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
