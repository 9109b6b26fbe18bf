// A few seconds of steady buying, for CI and `helm test`: proves the path works end to end.
//   BASE_URL, SALE, JWT_SECRET, BUYERS (500), RATE (100/s), DURATION (5s)
import { buy, config, summaryWriter } from './lib/buy.js';

export const options = {
  scenarios: {
    smoke: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE || '100', 10),
      timeUnit: '1s',
      duration: __ENV.DURATION || '5s',
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    reservations_unexpected: ['count==0'],
    reservations_accepted: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const cfg = config();
export default function () { buy(cfg); }
export const handleSummary = summaryWriter('smoke');
